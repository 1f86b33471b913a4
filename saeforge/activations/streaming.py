"""StreamingSource: training batches computed from the model on the fly, for users with no disk budget.

The corpus is read as blocks of contexts, each holding about `buffer_tokens` tokens (the shuffle buffer). A
block's activations are computed, shuffled with a generator seeded by (seed, epoch, block, rank) and served as
batches; then the next block. The state (epoch, block, position inside the block) resumes exactly: a restored
source recomputes only the current block's forward passes. Under data parallelism rank r runs the forward
passes of the block's contexts i with i % world_size == r and serves batch_size // world_size rows per batch;
every rank serves the same number of batches per block (computed from the token ids, which all ranks see).
The rank and world size come from the run's `saeforge.distributed.DistContext`, as for capture and training.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import torch

from saeforge.activations.corpus import ContextBatch, ContextStream
from saeforge.distributed import DistContext


def _context(ctx: DistContext | None, rank: int | None, world: int | None, device) -> DistContext:
    """The source's DistContext: `ctx`, or one from explicit rank/world_size, or from the torchrun env."""
    if ctx is not None:
        if rank is not None or world is not None:
            raise ValueError("give either ctx or rank/world_size, not both")
        return ctx
    if rank is None and world is None:
        return DistContext.from_env(torch.device(device))
    rank, world = rank or 0, 1 if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, world_size={world})")
    return DistContext(rank=rank, world_size=world)


class StreamingSource:
    """Infinite iterator of [batch_size // world_size, d_in] activation batches at `hook`, computed live.

    Args:
        loaded: a saeforge.models.LoadedModel.
        hook: hook name.
        data: a text SOURCE, or [(source, weight), ...] for a mixture.
        batch_size: GLOBAL batch size (rows); this rank gets batch_size // world_size.
        buffer_tokens: shuffle buffer size in tokens (rows are shuffled within blocks of this many tokens).
        context_size, prepend_bos, exclude_special: as for capture.
        ctx: this process's place in the run; default `DistContext.from_env(loaded.device)` (joins the torchrun
            process group when WORLD_SIZE > 1, like capture), or the one given by `rank` and `world_size`.
        rank, world_size: an explicit slice, without a process group (tests, custom launchers); not with `ctx`.
        forward_batch: contexts per forward pass.
    """

    def __init__(
        self,
        loaded,
        hook: str,
        data: str | list[tuple[str, float]],
        batch_size: int,
        buffer_tokens: int = 1 << 16,
        context_size: int = 128,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        dtype: torch.dtype = torch.float32,
        prepend_bos: bool = True,
        exclude_special: bool = True,
        forward_batch: int = 8,
        ctx: DistContext | None = None,
    ):
        from saeforge.models import resolve_hook

        self._owns_ctx = ctx is None and rank is None and world_size is None
        ctx = _context(ctx, rank, world_size, loaded.device)
        rank, world_size = ctx.rank, ctx.world_size
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of world_size {world_size}"
            )
        if buffer_tokens < batch_size:
            raise ValueError(
                f"buffer_tokens ({buffer_tokens}) must hold at least one batch ({batch_size} rows)"
            )
        resolve_hook(loaded.model, hook)
        self.loaded = loaded
        self.hook = hook
        self.sources = [(data, 1.0)] if isinstance(data, str) else list(data)
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.contexts_per_block = max(1, math.ceil(buffer_tokens / context_size))
        self.context_size = context_size
        self.ctx = ctx
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.dtype = dtype
        self.prepend_bos, self.exclude_special = prepend_bos, exclude_special
        self.forward_batch = forward_batch
        self.epoch, self.block, self.position = 0, 0, 0
        self._iter: Iterator[torch.Tensor] | None = None
        self._last: tuple[int, int, list[int]] | None = None
        self._scale: float | None = None

    def _stream(self) -> ContextStream:
        return ContextStream(
            self.sources,
            self.loaded.tokenizer,
            self.context_size,
            sys.maxsize,
            self.contexts_per_block,
            prepend_bos=self.prepend_bos,
            exclude_special=self.exclude_special,
            seed=self.seed,
        )

    def _rows(self, block: ContextBatch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's rows of a block [n, d_in], their sequence ids [n], and batches every rank can serve."""
        from saeforge.models import run_hooks

        counts = [int(block.candidate[r :: self.world_size].sum()) for r in range(self.world_size)]
        n_batches = min(counts) // self.local_batch_size
        mine = torch.arange(self.rank, block.tokens.shape[0], self.world_size)
        rows, seqs = [], []
        for chunk in mine.split(self.forward_batch):
            ids = block.tokens[chunk].to(self.loaded.device)
            with torch.no_grad():
                acts = next(
                    iter(run_hooks(self.loaded, ids, torch.ones_like(ids), [self.hook]).values())
                ).cpu()
            cand = block.candidate[chunk]
            rows.append(acts[cand].to(self.dtype))
            seqs.append(block.seq_ids[chunk][:, None].expand_as(cand)[cand])
        return torch.cat(rows), torch.cat(seqs), n_batches

    def _generate(self) -> Iterator[torch.Tensor]:
        while True:
            served, from_start = False, self.block == 0 and self.position == 0
            for block in self._stream():
                if block.index < self.block:
                    continue
                rows, seqs, n_batches = self._rows(block)
                key = [self.seed, self.epoch, block.index, self.rank]
                g = torch.Generator().manual_seed(int(np.random.default_rng(key).integers(1 << 62)))
                order = torch.randperm(rows.shape[0], generator=g)
                while self.position < n_batches:
                    take = order[
                        self.position * self.local_batch_size : (self.position + 1) * self.local_batch_size
                    ]
                    self._last = (self.epoch, block.index, seqs[take].unique().tolist())
                    self.position += 1
                    served = True
                    yield rows[take]
                self.block, self.position = block.index + 1, 0
            if not served and from_start:
                raise ValueError(
                    f"the corpus {[s for s, _ in self.sources]} yields no batch of {self.batch_size} rows "
                    f"with buffer_tokens={self.contexts_per_block * self.context_size}; give more text"
                )
            self.epoch, self.block, self.position = self.epoch + 1, 0, 0

    def close(self) -> None:
        """Leaves the process group if this source joined it (a `ctx` passed in is the caller's to close)."""
        if self._owns_ctx:
            self.ctx.close()

    def __iter__(self) -> StreamingSource:
        return self

    def __next__(self) -> torch.Tensor:
        if self._iter is None:
            self._iter = self._generate()
        return next(self._iter)

    def state_dict(self) -> dict:
        """JSON-able state: the next batch is batch `position` of block `block` of epoch `epoch`."""
        return {"epoch": self.epoch, "block": self.block, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed={state['seed']}; this source has seed={self.seed}")
        self.epoch, self.block, self.position = (
            int(state["epoch"]),
            int(state["block"]),
            int(state["position"]),
        )
        self._iter = None

    def last_source(self) -> list[tuple[str, list[int]]]:
        """For the last batch: [("streaming HOOK epoch E block B", sequence ids of its rows)]."""
        if self._last is None:
            return []
        epoch, block, seqs = self._last
        return [(f"streaming {self.hook} epoch {epoch} block {block}", seqs)]

    @property
    def activation_scale(self) -> float:
        """sqrt(d_in) / E||x||, estimated from the first block of the corpus."""
        if self._scale is None:
            rows, _, _ = self._rows(next(iter(self._stream())))
            mean_norm = float(rows.double().norm(dim=1).mean())
            self._scale = math.sqrt(rows.shape[1]) / mean_norm if mean_norm > 0 else 1.0
        return self._scale
