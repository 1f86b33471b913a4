"""ActivationLoader: globally shuffled training batches from a store's memory-mapped shards, exactly resumable.

Each epoch draws one permutation of all rows of all shards from (seed, epoch); global batch `p` of the epoch is
permutation[p * batch_size : (p + 1) * batch_size] (the last incomplete batch of an epoch is skipped), and rank
r of world_size takes the r-th contiguous slice of batch_size // world_size rows. The state is (epoch,
position), so a loader restored from `state_dict()` yields exactly the batches the original would have.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from saeforge.activations.shards import as_tensor
from saeforge.activations.stats import F32_MAX, unusable_rows
from saeforge.activations.store import ActivationStore, StoreError
from saeforge.dtypes import SAFETENSORS_NAMES

_SCALE_SAMPLE = 4096
_NP_OF = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(np.uint16)}
_NP_OF_TORCH = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def estimate_mean_norm(store: ActivationStore, rows: int = _SCALE_SAMPLE) -> float:
    """E||x|| over up to `rows` rows spread evenly through the store (float64)."""
    n = store.num_rows
    take = np.unique(np.linspace(0, n - 1, num=min(rows, n)).astype(np.int64))
    x = gather_rows(store, take, torch.float64)
    return float(x.norm(dim=1).mean())


def _readonly_view(a: np.ndarray) -> torch.Tensor:
    """A torch view of a read-only memory map, only ever read from (torch warns about non-writable arrays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def gather_rows(store: ActivationStore, rows: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Rows `rows` (global row indices) of the store as [len(rows), d_in], in increasing row order.

    Indices are sorted and split per shard; each shard's rows are gathered from its memory map in increasing file
    offset, by `torch.index_select` into the output.
    """
    gather_dtype = dtype if dtype in (torch.float32, torch.float64, torch.float16) else torch.float32
    # numpy allocates large arrays with transparent huge pages: far fewer page faults than torch.empty.
    out = torch.from_numpy(np.empty((len(rows), store.d_in), dtype=_NP_OF_TORCH[gather_dtype]))
    sorted_rows = np.sort(rows)
    shard_of = np.searchsorted(store.row_offsets, sorted_rows, side="right") - 1
    bounds = np.searchsorted(shard_of, np.arange(store.num_shards + 1))
    st_dtype = SAFETENSORS_NAMES[store.manifest.dtype]
    same = _NP_OF[st_dtype] == np.dtype(_NP_OF_TORCH[gather_dtype])
    for s in range(store.num_shards):
        a, b = int(bounds[s]), int(bounds[s + 1])
        if a == b:
            continue
        local = sorted_rows[a:b] - store.row_offsets[s]
        if same:
            # torch's index_select straight into the output: no temporary (numpy's fancy indexing makes one),
            # about 3x faster here (docs/benchmarks.md).
            torch.index_select(
                _readonly_view(store.activations_array(s)), 0, torch.from_numpy(local), out=out[a:b]
            )
        else:
            out[a:b] = as_tensor(store.activations_array(s)[local], st_dtype).to(gather_dtype)
    return out.to(dtype)


def rows_source(store: ActivationStore, rows: np.ndarray) -> list[tuple[str, list[int]]]:
    """[(shard path, row indices inside that shard)] of global rows `rows`, for error messages."""
    rows = np.sort(rows)
    shard_of = np.searchsorted(store.row_offsets, rows, side="right") - 1
    out = []
    for s in np.unique(shard_of):
        local = rows[shard_of == s] - store.row_offsets[s]
        out.append((str(store.shard_path(int(s))), local.tolist()))
    return out


class UnusableRows(ValueError):
    """The store holds rows with NaN/inf values or a float32 squared norm that overflows; names them."""


def find_unusable_rows(store: ActivationStore, limit: int = 10) -> list[tuple[str, int]]:
    """Up to `limit` (shard path, row inside the shard) of rows that `unusable_rows` rejects, in store order."""
    found: list[tuple[str, int]] = []
    for s in range(store.num_shards):
        acts = store.shard(s)["activations"]
        for start in range(0, acts.shape[0], 65536):
            bad = unusable_rows(acts[start : start + 65536]).nonzero()[:, 0] + start
            found += [(str(store.shard_path(s)), int(r)) for r in bad[: limit - len(found)]]
            if len(found) >= limit:
                return found
    return found


def check_stats_usable(store: ActivationStore) -> None:
    """Raises UnusableRows, naming the rows, when the manifest's statistics show a NaN/inf row or one whose
    squared norm overflows float32 (E||x||^2 above float32's max implies one row above it)."""
    stats = store.stats
    if stats is None:
        return
    if math.isfinite(stats.mean_sq_norm) and stats.mean_sq_norm <= F32_MAX:
        return
    rows = find_unusable_rows(store)
    where = "; ".join(f"{p} row {r}" for p, r in rows) or "no single row (the statistics themselves are bad)"
    raise UnusableRows(
        f"{store.path}: its statistics give E||x||^2 = {stats.mean_sq_norm:.3g}, beyond float32 (max "
        f"{F32_MAX:.3g}): rows with NaN/inf or overflowing values: {where}. Training on them would report "
        "meaningless metrics. Recapture with the outlier filter on (`--drop-outliers`, default "
        "1000), or remove those rows."
    )


class ActivationLoader:
    """Infinite iterator of training batches [batch_size // world_size, d_in] from an activation store.

    Which rows form a batch is random (a slice of the epoch's permutation); inside a batch the rows come in
    store order (sorted by shard and row), which makes the gather a sequential sweep of each shard. Shuffle
    inside the batch if its order matters to you (SAE losses are means over the batch, so it does not).

    Args:
        store: an opened ActivationStore.
        batch_size: the GLOBAL batch size; each rank gets batch_size // world_size rows of every batch.
        seed: permutation seed; epoch e uses the permutation drawn from (seed, e).
        rank, world_size: this process's slice of each global batch (data parallel training).
        dtype: dtype of the yielded batches.
        verify: check every shard against its sha256 now, before serving any batch (with False, each shard is
            still checked when first read, unless the store was opened with verify="off").
    """

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        verify: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world_size {world_size}"
            )
        if store.num_rows < batch_size:
            raise StoreError(
                f"{store.path} holds {store.num_rows} rows, fewer than one batch of {batch_size}; "
                "capture more tokens or lower the batch size"
            )
        if verify:
            store.check_shards()  # a corrupted shard fails here, before training
        check_stats_usable(store)
        self.store = store
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self.batches_per_epoch = store.num_rows // batch_size
        self.epoch = 0
        self.position = 0
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1
        self._last: np.ndarray | None = None
        self._scale: float | None = None

    # -- shuffling ---------------------------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """The global row permutation of `epoch` (int64 [num_rows]), identical on every rank."""
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.store.num_rows)
            self._perm_epoch = epoch
        return self._perm

    def batch_rows(self, epoch: int, position: int) -> np.ndarray:
        """Global row indices this rank gets for batch `position` of `epoch`."""
        start = position * self.batch_size + self.rank * self.local_batch_size
        return self.permutation(epoch)[start : start + self.local_batch_size]

    # -- iteration ---------------------------------------------------------------------------------------
    def __iter__(self) -> ActivationLoader:
        return self

    def __next__(self) -> torch.Tensor:
        rows = self.batch_rows(self.epoch, self.position)
        self._last = rows
        batch = gather_rows(self.store, rows, self.dtype)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict:
        """JSON-able state: the next batch is batch `position` of epoch `epoch`."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state was saved with {key}={state[key]} but this loader has {key}="
                    f"{getattr(self, key)}; resume with the same {key}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"loader position {position} is outside [0, {self.batches_per_epoch})")
        self.epoch, self.position = epoch, position

    def last_source(self) -> list[tuple[str, list[int]]]:
        """For the last batch: [(shard path, row indices inside that shard)], for error messages."""
        return [] if self._last is None else rows_source(self.store, self._last)

    @property
    def activation_scale(self) -> float:
        """sqrt(d_in) / E||x||: multiply activations by it to bring their mean norm to sqrt(d_in).

        From the manifest's statistics when present, else estimated from a sample of rows."""
        if self._scale is None:
            stats = self.store.stats
            if stats is not None and stats.mean_norm:
                mean_norm = stats.mean_norm
            elif stats is not None and stats.mean_sq_norm > 0:
                mean_norm = math.sqrt(stats.mean_sq_norm)
            else:
                mean_norm = estimate_mean_norm(self.store)
            self._scale = math.sqrt(self.store.d_in) / mean_norm if mean_norm > 0 else 1.0
        return self._scale
