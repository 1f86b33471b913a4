"""Models split over devices (`--device-map`): accelerate places each module, its hooks move tensors between them.

`resolve_device_map` turns the setting into the keyword arguments of `from_pretrained`:

    None                        {}                          (the caller moves the whole model to --device)
    "auto"                      {"device_map": "auto", "max_memory": this replica's GPUs + CPU RAM}
    "map.json" or a dict        {"device_map": {module name: device}, "offload_folder": ...}

Under torchrun, data-parallel capture keeps one model replica per group of GPUs: local rank r of
LOCAL_WORLD_SIZE n on a node with G GPUs uses GPUs [r * G / n, (r + 1) * G / n) (`replica_gpus`), so each
rank's replica spans its own G / n devices and ranks never share one. On a machine without GPUs "auto" places
everything in CPU RAM. Hook points still attach: accelerate wraps a module's forward, and the forward hooks of
`saeforge.models.hooks` run around the wrapped call on the module's own device.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from saeforge.errors import ConfigError

_OFFLOADS = ("disk", "meta")


def replica_gpus(local_rank: int, local_world_size: int, n_gpus: int) -> list[int]:
    """The GPU indices of local rank `local_rank`'s replica: an equal contiguous share of the node's GPUs."""
    if n_gpus == 0:
        return []
    if n_gpus % local_world_size:
        raise ConfigError(
            f"--device-map auto: {n_gpus} GPUs do not split evenly over {local_world_size} processes per node; "
            f"launch a divisor of {n_gpus} processes (one model replica per group of GPUs)"
        )
    per = n_gpus // local_world_size
    return list(range(local_rank * per, (local_rank + 1) * per))


def _read_map(text: str) -> dict[str, Any]:
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"--device-map {text!r}: give auto or a JSON file mapping module names to devices "
            '(e.g. {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "cpu"})'
        )
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--device-map {path}: not valid JSON ({e})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"--device-map {path}: must hold a non-empty object {{module name: device}}")
    return mapping


def resolve_device_map(device_map: str | dict[str, Any] | None, offload_folder: str | Path | None) -> dict:
    """The `from_pretrained` keyword arguments for `device_map` (module docstring); {} for None."""
    if device_map is None:
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError(
            '--device-map needs accelerate: pip install accelerate (or pip install -e ".[bigmodel]")'
        ) from None
    if device_map == "auto":
        if not torch.cuda.is_available():
            return {"device_map": "auto"}
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        gpus = replica_gpus(
            local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        )
        from accelerate.utils import get_max_memory

        budget = get_max_memory()
        return {"device_map": "auto", "max_memory": {g: budget[g] for g in gpus} | {"cpu": budget["cpu"]}}
    mapping = _read_map(device_map) if isinstance(device_map, str) else dict(device_map)
    out: dict[str, Any] = {"device_map": mapping}
    if any(v in _OFFLOADS for v in mapping.values()):
        if offload_folder is None:
            offload_folder = tempfile.mkdtemp(prefix="saeforge-offload-")
            atexit.register(shutil.rmtree, offload_folder, True)
        out["offload_folder"] = str(offload_folder)
    return out


def input_device(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs go to: the first non-offloaded device of its map, else its parameters'."""
    mapping = getattr(model, "hf_device_map", None)
    if mapping:
        for where in mapping.values():
            if where not in _OFFLOADS:
                return torch.device(f"cuda:{where}" if isinstance(where, int) else where)
    return next(model.parameters()).device
