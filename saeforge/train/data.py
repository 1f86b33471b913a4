"""Where batches come from: opening the store and its loader, fingerprinting the data, locating bad rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from saeforge.train.config import ConfigError, TrainConfig
from saeforge.train.distributed import DistContext


def open_store(cfg: TrainConfig, source: Iterable[Tensor] | None) -> Any:
    """The store at cfg.activations (None without one; then a `source` is required)."""
    if cfg.activations is None:
        if source is None:
            raise ConfigError(
                "activations: give an activation store directory (or pass `source` from Python)"
            )
        return None
    from saeforge.activations.store import ActivationStore

    try:
        return ActivationStore.open(cfg.activations, verify="lazy" if cfg.verify else "off")
    except (OSError, ValueError) as e:
        raise ConfigError(f"activations: cannot open the store {cfg.activations}: {e}") from e


def open_loader(cfg: TrainConfig, store: Any, ctx: DistContext) -> Any:
    """The store's shuffling loader; each rank reads its slice of every global batch."""
    from saeforge.activations.loader import ActivationLoader

    try:
        return ActivationLoader(
            store, batch_size=cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size
        )
    except ValueError as e:
        raise ConfigError(f"activations: cannot read the store {cfg.activations}: {e}") from e


def data_fingerprint(store: Any) -> str | None:
    """sha256 over the store's shard list (rows and checksums): the same data wherever the store lives."""
    if store is None:
        return None
    shards = [[s.rows, s.sha256] for s in store.manifest.shards]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def describe_batch(source: Any, store: Any) -> str:
    """Where the last batch came from: the shards and rows holding NaN/inf when the store can tell, else the
    source's own `last_source()`."""
    fn = getattr(source, "last_source", None)
    if not callable(fn):
        return "the in-memory batch source"
    where = fn()
    if store is None or not isinstance(where, list):
        return str(where)
    index = {str(store.shard_path(i)): i for i in range(store.num_shards)}
    bad = []
    for path, rows in where:
        acts = store.shard(index[str(path)])["activations"][rows]
        bad_rows = [r for r, ok in zip(rows, torch.isfinite(acts).all(-1).tolist(), strict=True) if not ok]
        if bad_rows:
            bad.append(f"shard {path} rows {bad_rows[:10]}")
    return "; ".join(bad) or "shards " + ", ".join(str(p) for p, _ in where)
