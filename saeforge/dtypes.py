"""The one dtype table: the names configs, manifests and cfg.json use <-> torch dtypes <-> safetensors names.

Importing this module does not import torch (configs validate dtype names before torch loads); the torch dtype
of a name is looked up when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

# Stored activations and model weights.
StorageDtype = Literal["float32", "float16", "bfloat16"]
# SAE parameters (cfg.json `dtype`); training also runs in float64 for reference checks.
FloatDtype = Literal["float32", "float16", "bfloat16", "float64"]
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDtype)
FLOAT_DTYPES: tuple[str, ...] = get_args(FloatDtype)

# name -> safetensors header name; integer tensors (token ids, positions) are stored too.
SAFETENSORS_NAMES: dict[str, str] = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a table name ("bfloat16" -> torch.bfloat16); an unknown name raises ValueError."""
    if name not in SAFETENSORS_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(FLOAT_DTYPES)}")
    import torch

    return getattr(torch, name)


def safetensors_to_torch() -> dict[str, torch.dtype]:
    """safetensors header name ("BF16") -> torch dtype, for every name of the table."""
    return {st: torch_dtype(name) for name, st in SAFETENSORS_NAMES.items()}
