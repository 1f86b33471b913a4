"""Safetensors shards: atomic, hashed writing and memory-mapped reading.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor name to
`{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the end of the header), then the raw
bytes. We write that layout ourselves so a shard is hashed while it is written (no second read, no extra copy),
and read it back through `np.memmap` so that opening a shard costs no I/O beyond its header.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch

from saeforge.atomic import atomic_path
from saeforge.dtypes import safetensors_to_torch

# safetensors dtype name <-> torch dtype; bfloat16 is memory-mapped as uint16 and viewed as bfloat16.
ST_DTYPES: dict[str, torch.dtype] = safetensors_to_torch()
_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
_NP_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
}
_CHUNK = 1 << 22


class ShardError(ValueError):
    """A shard file is missing, truncated, corrupted or does not match its manifest entry."""


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """Writes `tensors` as a safetensors file atomically; returns (sha256 hex digest, size in bytes).

    The file appears under its final name only once complete and fsynced, so a killed writer leaves at most a
    stray `.NAME.*.tmp` file, never a partial shard.
    """
    path = Path(path)
    header: dict[str, dict] = {}
    offset = 0
    views = []
    for name, t in tensors.items():
        if t.dtype not in _ST_NAMES:
            raise ShardError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        view = _tensor_bytes(t)
        header[name] = {
            "dtype": _ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(view)],
        }
        offset += len(view)
        views.append(view)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in (struct.pack("<Q", len(header_bytes)), header_bytes, *views):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest(), 8 + len(header_bytes) + offset


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """Parses a safetensors header; returns ({name: {dtype, shape, data_offsets}}, data start offset).

    Raises ShardError if the file is missing, truncated or its header is not valid.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ShardError(f"{path}: truncated (no safetensors header)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > 100_000_000 or 8 + hlen > size:
                raise ShardError(f"{path}: truncated or not a safetensors file (header length {hlen})")
            header = json.loads(f.read(hlen))
    except FileNotFoundError as e:
        raise ShardError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: corrupted safetensors header ({e})") from e
    header.pop("__metadata__", None)
    data_start = 8 + hlen
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if data_start + end != size:
        raise ShardError(
            f"{path}: {size} bytes on disk but its header describes {data_start + end} (truncated?)"
        )
    return header, data_start


def memmap_array(path: Path, info: dict, data_start: int, writable: bool = False) -> np.ndarray:
    """Memory-maps one tensor of a safetensors file as a numpy array (bfloat16 as uint16).

    Read-only by default; `writable=True` maps copy-on-write, so writes never reach the file.
    """
    if info["dtype"] not in _NP_DTYPES:
        raise ShardError(f"{path}: unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    shape = tuple(int(s) for s in info["shape"])
    np_dtype = _NP_DTYPES[info["dtype"]]
    if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize:
        raise ShardError(f"{path}: tensor byte range does not match its shape {list(shape)}")
    if end == begin:
        return np.empty(shape, dtype=np_dtype)
    return np.memmap(
        path, dtype=np_dtype, mode="c" if writable else "r", offset=data_start + begin, shape=shape
    )


def as_tensor(arr: np.ndarray, st_dtype: str) -> torch.Tensor:
    """A torch view of a writable numpy array from `memmap_array` (or a copy of one), bfloat16 restored."""
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if st_dtype == "BF16" else t


def memmap_tensor(path: Path, info: dict, data_start: int) -> torch.Tensor:
    """Memory-maps one tensor of a safetensors file (copy-on-write, so the file itself is never modified)."""
    return as_tensor(memmap_array(path, info, data_start, writable=True), info["dtype"])


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
