"""Normalisation statistics accumulated in float64 while rows are written."""

from __future__ import annotations

import torch

from saeforge.activations.manifest import Stats


class RunningStats:
    """Float64 sums of x, ||x||^2 and ||x|| over rows [n, d_in], added shard by shard."""

    def __init__(self, d_in: int):
        self.sum = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_norm = 0.0
        self.sum_norm = 0.0
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Adds rows x [n, d_in] (any float dtype)."""
        x64 = x.to(torch.float64)
        sq = (x64 * x64).sum(dim=1)
        self.sum += x64.sum(dim=0)
        self.sum_sq_norm += float(sq.sum())
        self.sum_norm += float(sq.sqrt().sum())
        self.count += x.shape[0]

    def result(self) -> Stats | None:
        if self.count == 0:
            return None
        n = self.count
        return Stats(
            mean=(self.sum / n).tolist(),
            mean_sq_norm=self.sum_sq_norm / n,
            mean_norm=self.sum_norm / n,
            count=n,
        )
