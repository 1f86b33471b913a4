"""Writing a store from tensors already in memory (tests, conversions, small experiments)."""

from __future__ import annotations

from pathlib import Path

import torch

from saeforge.activations.manifest import FORMAT_VERSION, MANIFEST, Manifest, ShardEntry
from saeforge.activations.shards import write_shard
from saeforge.activations.stats import RunningStats
from saeforge.activations.store import ActivationStore
from saeforge.dtypes import STORAGE_DTYPES, torch_dtype


def shard_name(index: int, rank: int = 0) -> str:
    return f"shard-{rank:03d}-{index:06d}.safetensors"


def write_store(
    path: str | Path,
    activations: torch.Tensor,
    hook: str = "activations",
    dtype: str = "float32",
    shard_rows: int = 65536,
    token_ids: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> ActivationStore:
    """Writes activations [rows, d_in] (optionally token_ids [rows], positions [rows, 2]) as a store.

    Shards hold `shard_rows` rows each; the manifest carries the float64 statistics of the rows as stored.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype!r}")
    if activations.ndim != 2:
        raise ValueError(f"activations must be [rows, d_in], got shape {list(activations.shape)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    acts = activations.to(torch_dtype(dtype))
    stats = RunningStats(acts.shape[1])
    entries = []
    for i, start in enumerate(range(0, acts.shape[0], shard_rows)):
        part = {"activations": acts[start : start + shard_rows]}
        if token_ids is not None:
            part["token_ids"] = token_ids[start : start + shard_rows].to(torch.int64)
        if positions is not None:
            part["positions"] = positions[start : start + shard_rows].to(torch.int64)
        sha, _ = write_shard(path / shard_name(i), part)
        stats.add(part["activations"])
        entries.append(ShardEntry(path=shard_name(i), rows=part["activations"].shape[0], sha256=sha))
    Manifest(
        d_in=acts.shape[1],
        dtype=dtype,
        hook=hook,
        shards=entries,
        format_version=FORMAT_VERSION,
        stats=stats.result(),
        tokens=None,
    ).write(path / MANIFEST)
    return ActivationStore.open(path)
