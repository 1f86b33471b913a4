"""The one distributed layer: joining the torchrun process group, and the collectives the stages use.

Capture, the streaming source and training each take their place in a run from `DistContext.from_env`: it joins
the process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU) unless the caller already has, and leaves it
on `close()` if it joined. `Collectives` is the protocol an SAE architecture sees for batch-wide statistics
(identity in one process); `TorchCollectives` implements it over the process group.

Data-parallel training: every rank holds a full copy of every SAE and reads its own slice of each global batch.
Gradients are summed over ranks and divided by the world size, which equals one process's gradient on the
global batch because each rank's loss is a mean over an equal-sized slice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class Collectives:
    """Data-parallel collectives an architecture may need for batch-wide statistics.

    The single-process default is the identity; `TorchCollectives` (below) backs it under torchrun.
    world_size: the data-parallel ranks the batch is split over, in equal slices. Under latent sharding
    (saeforge/train/tensor_parallel.py) the reductions run over every rank, each holding its latents of its slice.
    """

    world_size: int = 1

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of `t` over ranks (returns a tensor; does not modify `t` in the single-process case)."""
        return t

    def all_gather_cat(self, t: Tensor) -> Tensor:
        """Concatenation of every rank's `t` along dim 0, in rank order."""
        return t


class TorchCollectives(Collectives):
    """`Collectives` over the default torch.distributed process group.

    ranks: the processes in the group (default world_size; more when each data-parallel slice is latent-sharded).
    """

    def __init__(self, world_size: int, ranks: int | None = None):
        self.world_size = world_size
        self.ranks = ranks or world_size

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_gather_cat(self, t: Tensor) -> Tensor:
        """Concatenation along dim 0 in rank order; ranks may hold different numbers of rows."""
        t = t.detach().contiguous()
        n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(self.ranks)]
        dist.all_gather(sizes, n)
        rows = [int(s.item()) for s in sizes]
        padded = t.new_zeros((max(rows), *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.ranks)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:r] for p, r in zip(parts, rows, strict=True)], dim=0)


def _storage_order(t: Tensor) -> Tensor | None:
    """A contiguous view of t's elements in the order they lie in memory (t permuted by decreasing stride), or
    None when t's strides overlap or leave gaps (no such view exists)."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    view = t.permute(order)
    return view if view.is_contiguous() else None


@dataclass
class DistContext:
    """This process's place in the run: rank 0 of 1 unless launched by torchrun with WORLD_SIZE > 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    collectives: Collectives = field(default_factory=Collectives)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device) -> DistContext:
        """Joins the torchrun process group if WORLD_SIZE > 1 (NCCL for CUDA devices, gloo otherwise)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        owns = False
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            owns_group=owns,
            collectives=TorchCollectives(dist.get_world_size()),
        )

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def average_gradients(
        self, params: list[torch.nn.Parameter], group: Any = None, size: int | None = None
    ) -> None:
        """Replaces each gradient by its mean over ranks, in place and in the gradient's own memory layout.

        Each gradient is all-reduced through a contiguous view of its storage (`_storage_order`), so a
        column-major W_enc's gradient stays column-major and nothing is copied or allocated per step: the
        optimiser sees the layout the backward produced. A missing gradient is reduced as zeros.
        group, size: a process group of `size` ranks to average over instead (the data group of a
        latent-sharded run); default every rank."""
        size = self.world_size if size is None else size
        if size <= 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            view = _storage_order(p.grad)
            if view is None:  # overlapping or gappy strides: reduce a copy, write it back
                buf = p.grad.contiguous()
                dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
                p.grad.copy_(buf)
            else:
                dist.all_reduce(view, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(size)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True if `flag` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def all_reduce_(self, t: Tensor) -> Tensor:
        """Sums `t` over ranks in place and returns it."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (JSON-able), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copies rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
