"""Where batches come from: opening the store and its loader, fingerprinting the data, locating bad rows."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from saeforge.errors import ConfigError
from saeforge.train.config import TrainConfig


def source_widths(
    stores: list[Any], source: Any, cfg: TrainConfig
) -> tuple[tuple[int, ...], str, Iterator[Any] | None]:
    """(each part's width, where they came from, batches): of the stores, else of the source (its `d_ins` or
    `d_in`, or its first batch, kept for step 0 in the returned batches; None when nothing was read)."""
    if stores:
        names = ", ".join(str(p) for p in cfg.activation_paths)
        return tuple(s.d_in for s in stores), f"the store {names}", None
    d_ins = getattr(source, "d_ins", None) or getattr(source, "d_in", None)
    if d_ins is not None:
        return (tuple(d_ins) if isinstance(d_ins, (tuple, list)) else (int(d_ins),)), "the batch source", None
    it = iter(source)
    first = next(it)
    parts = (first,) if isinstance(first, Tensor) else tuple(first)
    return tuple(int(x.shape[-1]) for x in parts), "the batch source", itertools.chain([first], it)


def open_stores(cfg: TrainConfig, source: Iterable[Any] | None) -> list[Any]:
    """The stores the run reads (`TrainConfig.activation_paths`; [] without one, then a `source` is required)."""
    paths = cfg.activation_paths
    if not paths:
        if source is None:
            raise ConfigError(
                "activations: give an activation store directory (or pass `source` from Python)"
            )
        return []
    from saeforge.activations.store import ActivationStore

    stores = []
    for path in paths:
        try:
            stores.append(ActivationStore.open(path, verify="lazy" if cfg.verify else "off"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"activations: cannot open the store {path}: {e}") from e
    return stores


def open_loader(cfg: TrainConfig, stores: list[Any], rank: int, world_size: int) -> Any:
    """The stores' shuffling loader (aligned over several stores); data-parallel rank `rank` of `world_size`
    reads its slice of every batch."""
    from saeforge.activations.aligned import AlignedLoader
    from saeforge.activations.loader import ActivationLoader

    kwargs = dict(batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
    try:
        if len(stores) == 1:
            return ActivationLoader(stores[0], **kwargs)
        return AlignedLoader(stores, **kwargs)
    except ValueError as e:
        names = ", ".join(str(p) for p in cfg.activation_paths)
        raise ConfigError(f"activations: cannot read the stores {names}: {e}") from e


def data_fingerprint(stores: list[Any]) -> str | None:
    """sha256 over the stores' shard lists (rows and checksums): the same data wherever the stores live."""
    if not stores:
        return None
    shards = [[[s.rows, s.sha256] for s in store.manifest.shards] for store in stores]
    return hashlib.sha256(json.dumps(shards[0] if len(shards) == 1 else shards).encode()).hexdigest()


def describe_batch(source: Any, store: Any) -> str:
    """Where the last batch came from: the shards and rows holding NaN/inf or float32-overflowing values
    (`unusable_rows`) when the store can tell, else the
    source's own `last_source()`."""
    from saeforge.activations.stats import unusable_rows

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
        bad_rows = [r for r, bad in zip(rows, unusable_rows(acts).tolist(), strict=True) if bad]
        if bad_rows:
            finite = bool(torch.isfinite(acts).all())
            note = " (finite values whose squared norm overflows float32: inf in the loss)" if finite else ""
            bad.append(f"shard {path} rows {bad_rows[:10]}{note}")
    return "; ".join(bad) or "shards " + ", ".join(str(p) for p, _ in where)


def check_batch(
    parts, step: int, local_batch: int, widths, batch_size: int, world_size: int, d_in: int
) -> Tensor:
    """Raises ValueError unless every part of the step's batch is [local_batch, width]; returns a bool scalar
    tensor (no host sync): whether a row is unusable (NaN/inf, or a float32 squared norm that overflows).
    Checked before scaling, which could shrink an overflowing row back into range."""
    from saeforge.activations.stats import unusable_rows

    shapes = tuple((local_batch, w) for w in widths)
    if tuple(tuple(x.shape) for x in parts) != shapes:
        got = [tuple(x.shape) for x in parts]
        raise ValueError(
            f"batch of step {step} has shape {got[0] if len(got) == 1 else got}, expected "
            f"{' and '.join(f'[{b}, {w}]' for b, w in shapes)} (batch_size {batch_size} / "
            f"{world_size} ranks, d_in {d_in})"
        )
    return torch.stack([unusable_rows(x).any() for x in parts]).any()


def activation_scales(samples, source: Any, mode: str) -> tuple[float, ...]:
    """Per input part, the factor sqrt(d) / E||x|| (the source's own if it has one) or 1 (mode "none")."""
    if mode != "expected_norm":
        return (1.0,) * len(samples)
    given = getattr(source, "scales", None) or (getattr(source, "activation_scale", None),)
    if len(given) != len(samples):
        given = (None,) * len(samples)
    scales = tuple(
        float(math.sqrt(x.shape[-1]) / x.norm(dim=-1).mean().item() if s is None else s)
        for x, s in zip(samples, given, strict=True)
    )
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ConfigError(
            f"normalize_activations: the activation scale sqrt(d_in) / E||x|| is {scales} (the data's "
            "statistics hold NaN/inf or zeros); check the store with `saeforge verify`, recapture, or set "
            "normalize_activations: none"
        )
    return scales
