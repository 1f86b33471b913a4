"""Which latents are dead: AuxK trains them, and the logged dead fraction counts them.

A latent is dead when it has not fired in the last `dead_tokens` tokens (`ResolvedSAE.dead_tokens`), or, for an
architecture with a `rare_fraction` (the TopK family), when it fired on fewer than that fraction of the tokens a
latent fires on at the design rate k / d_sae over the same window: junk latents that fire on one token in
thousands, just at the selection level, are never dead by the first rule alone and so never trained by AuxK
(measured in docs/architectures.md).

    since  [d_sae] int64         tokens since the latent last fired
    recent [W, d_sae] float32    its fire counts in each of the last W = ceil(dead_tokens / B) batches (row s % W
                                 holds batch s); only where the second rule can differ from the first
    dead = since >= dead_tokens  or  sum(recent) < live_rate * W * B      (the latter after W batches)

The second rule is kept only where it can differ (a floor live_rate * W * B above one fire) and its window is at
most `MAX_WINDOW` batches (a run's own long dead_tokens: the first rule alone).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_WINDOW = 64  # batches: the counts cost W * d_sae floats


class DeadClock:
    """One SAE's dead counters on this rank (its latent shard under tensor parallelism). The trainer calls `update`
    with each batch's fire counts summed over the data-parallel ranks, so every rank holds the same counters."""

    def __init__(self, d_sae: int, dead_tokens: int, live_rate: float, batch: int, device: torch.device):
        self.dead_tokens = dead_tokens
        self.window = math.ceil(dead_tokens / batch)
        self.floor = live_rate * self.window * batch
        rare = self.floor > 1 and self.window <= MAX_WINDOW
        self.since = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.recent = torch.zeros((self.window if rare else 0, d_sae), device=device)

    def mask(self, steps_done: int) -> Tensor:
        """[d_sae] bool, the dead latents after `steps_done` batches."""
        dead = self.since >= self.dead_tokens
        if len(self.recent) and steps_done >= self.window:
            dead |= self.recent.sum(0) < self.floor
        return dead

    def update(self, step: int, fired: Tensor, rows: int) -> None:
        """After batch `step` (0-based) of `rows` tokens, on which latent j fired on fired[j] of them."""
        self.since += rows
        self.since.masked_fill_(fired > 0, 0)  # no boolean indexing: it would sync a GPU
        if len(self.recent):
            self.recent[step % self.window] = fired

    def tensors(self, name: str) -> dict[str, Tensor]:
        """The checkpoint's tensors (train/state.py): dead/<name> [d_sae], live/<name> [W, d_sae] when kept."""
        return {f"dead/{name}": self.since} | ({f"live/{name}": self.recent} if len(self.recent) else {})

    def load(self, t: dict[str, Tensor], name: str) -> None:
        self.since.copy_(t[f"dead/{name}"])
        if f"live/{name}" in t:
            self.recent.copy_(t[f"live/{name}"])
        elif len(self.recent):
            self.recent.fill_(self.floor)  # a checkpoint from before the rule: all alive for W batches

    def state(self) -> list[Tensor]:
        return [self.since, self.recent]
