"""The `device` setting every stage shares: one declaration, one default, one resolution.

`Device` is the config field type (importing this module does not import torch); `resolve_device` turns the
setting into a torch device when work starts: "auto" is CUDA when available, else CPU, and a bare "cuda" under
torchrun is the process's own GPU (LOCAL_RANK).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from saeforge.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEFAULT_DEVICE = "auto"
DeviceMap = Annotated[
    str | None,
    Field(
        min_length=1,
        description="split a model too big for one device over several with accelerate: auto (its layers over the "
        "GPUs this process may use, then CPU RAM; under torchrun each local rank gets its own group of GPUs), or "
        "a JSON file {module name: device} (cpu, cuda:N, disk); default: the whole model on --device",
    ),
]
Device = Annotated[
    str,
    Field(
        min_length=1,
        description="torch device: cpu, cuda, cuda:N, or auto (CUDA when available, else CPU)",
    ),
]


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """ "auto" -> cuda or cpu; a bare "cuda" -> cuda:LOCAL_RANK. Raises ConfigError for CUDA without a GPU."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(
            f"device: {name!r} is not a torch device ({e}); use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {name!r} was asked for but no CUDA device is available; use device cpu or auto"
            )
        if device.index is None:
            rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
            device = torch.device("cuda", rank)
    return device
