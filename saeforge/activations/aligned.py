"""Aligned stores: several stores whose row r comes from the same token, served as tuples of batches.

Stores are aligned when they were captured together: the hooks of one capture (`--hook A --hook B`), or the
same hook of two models run over the same contexts (paired capture, `--model BASE --model FINETUNED`). Then
row r of every store carries the same token id and the same (sequence, position), and `check_aligned` proves
it by comparing those columns row by row (equal row counts alone prove nothing: another corpus, seed or context
size gives as many rows). Capture's outlier filter (`--drop-outliers`, on by default) drops rows per hook: the hooks
of a capture where it dropped a row at one hook only are not aligned and are refused.

AlignedLoader draws one permutation per epoch, exactly as ActivationLoader does for one store (it holds one
ActivationLoader per store and takes the row schedule of the first), and gathers the same global rows from every
store. Its state is the first loader's (epoch, position), so resume is as exact as for one store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from saeforge.activations.loader import ActivationLoader, gather_rows, rows_source
from saeforge.activations.store import ActivationStore, StoreError

_CHUNK_ROWS = 1 << 20


def _open(store: ActivationStore | str | Path) -> ActivationStore:
    return store if isinstance(store, ActivationStore) else ActivationStore.open(store)


def _row_keys(store: ActivationStore, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """token_ids [n] and positions [n, 2] of global rows [start, stop), read from the shards' memory maps."""
    tokens, positions = [], []
    s = int(np.searchsorted(store.row_offsets, start, side="right")) - 1
    at = start
    while at < stop:
        lo = at - int(store.row_offsets[s])
        hi = min(stop, int(store.row_offsets[s + 1])) - int(store.row_offsets[s])
        shard = store.shard(s)
        missing = [k for k in ("token_ids", "positions") if k not in shard]
        if missing:
            raise StoreError(
                f"{store.shard_path(s)} has no {' or '.join(missing)}, so its rows cannot be matched to another "
                "store's; capture the stores together with `saeforge capture` (write_store takes token_ids= and "
                "positions=)"
            )
        tokens.append(shard["token_ids"][lo:hi].numpy())
        positions.append(shard["positions"][lo:hi].numpy())
        at += hi - lo
        s += 1
    return np.concatenate(tokens), np.concatenate(positions)


def _where(store: ActivationStore, row: int) -> str:
    s = int(np.searchsorted(store.row_offsets, row, side="right")) - 1
    return f"{store.path} (shard {store.manifest.shards[s].path}, row {row - int(store.row_offsets[s])})"


def _describe(tokens: np.ndarray, positions: np.ndarray, i: int) -> str:
    seq, pos = positions[i].tolist()
    return f"token {int(tokens[i])} at (sequence {seq}, position {pos})"


def check_aligned(stores: Sequence[ActivationStore | str | Path]) -> list[ActivationStore]:
    """Raises StoreError unless row r of every store comes from the same token; returns the opened stores.

    Compares every row's token id and (sequence, position) with the first store's; the message names the
    first mismatch (store, shard, row, values) or the differing row counts.
    """
    opened = [_open(s) for s in stores]
    if not opened:
        raise StoreError("check_aligned needs at least one store")
    ref = opened[0]
    for other in opened[1:]:
        common = min(ref.num_rows, other.num_rows)
        for start in range(0, common, _CHUNK_ROWS):
            stop = min(common, start + _CHUNK_ROWS)
            ref_tok, ref_pos = _row_keys(ref, start, stop)
            tok, pos = _row_keys(other, start, stop)
            differ = (ref_tok != tok) | (ref_pos != pos).any(axis=1)
            if differ.any():
                i = int(differ.argmax())
                raise StoreError(
                    f"stores were not captured together: row {start + i} is {_describe(tok, pos, i)} in "
                    f"{_where(other, start + i)} but {_describe(ref_tok, ref_pos, i)} in {_where(ref, start + i)}. "
                    "Capture them in one `saeforge capture` (several --hook, or --model BASE --model FINETUNED) "
                    "with the same corpus, --tokens, --context-size and --seed, and --drop-outliers 0"
                )
        if ref.num_rows != other.num_rows:
            raise StoreError(
                f"stores were not captured together: {other.path} holds {other.num_rows} rows but {ref.path} "
                f"holds {ref.num_rows} (the first {common} agree); capture them in one run with the same --tokens"
            )
    return opened


class AlignedLoader:
    """Infinite iterator of aligned batches: tuples of float tensors, one [batch_size // world_size, d_in_i] per
    store, row r of each from the same token.

    Args:
        stores: ActivationStores (or their directories), checked with `check_aligned` unless `check=False`.
        batch_size, seed, rank, world_size, dtype, verify: as for ActivationLoader; the same rows are drawn
            from every store.
        check: compare the stores' token ids and positions row by row before serving anything.
    """

    def __init__(
        self,
        stores: Sequence[ActivationStore | str | Path],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        verify: bool = True,
        check: bool = True,
    ):
        opened = check_aligned(stores) if check else [_open(s) for s in stores]
        if not check and len({s.num_rows for s in opened}) > 1:
            raise StoreError(f"aligned stores must hold as many rows: {[s.num_rows for s in opened]}")
        self.loaders = tuple(
            ActivationLoader(s, batch_size, seed, rank, world_size, dtype, verify) for s in opened
        )
        self.stores = tuple(opened)
        self.dtype = dtype
        self._last: np.ndarray | None = None

    @property
    def _schedule(self) -> ActivationLoader:
        return self.loaders[0]

    def __iter__(self) -> AlignedLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        lead = self._schedule
        rows = lead.batch_rows(lead.epoch, lead.position)
        first = next(lead)
        self._last = rows
        return (first, *(gather_rows(s, rows, self.dtype) for s in self.stores[1:]))

    def state_dict(self) -> dict:
        """JSON-able state: the next batch is batch `position` of epoch `epoch` (ActivationLoader's)."""
        return {**self._schedule.state_dict(), "stores": len(self.stores)}

    def load_state_dict(self, state: dict) -> None:
        if "stores" in state and state["stores"] != len(self.stores):
            raise ValueError(
                f"loader state was saved over {state['stores']} stores but this loader has {len(self.stores)}"
            )
        self._schedule.load_state_dict(state)

    @property
    def epoch(self) -> int:
        return self._schedule.epoch

    @property
    def position(self) -> int:
        return self._schedule.position

    @property
    def batches_per_epoch(self) -> int:
        return self._schedule.batches_per_epoch

    @property
    def d_ins(self) -> tuple[int, ...]:
        return tuple(s.d_in for s in self.stores)

    @property
    def scales(self) -> tuple[float, ...]:
        """Each store's ActivationLoader.activation_scale (sqrt(d_in) / E||x||), in store order."""
        return tuple(loader.activation_scale for loader in self.loaders)

    def last_source(self) -> tuple[list[tuple[str, list[int]]], ...]:
        """For the last batch: each store's [(shard path, row indices inside that shard)]."""
        if self._last is None:
            return tuple([] for _ in self.stores)
        return tuple(rows_source(s, self._last) for s in self.stores)
