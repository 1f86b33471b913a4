"""Normalisation statistics accumulated in float64 while rows are written, and the test of an unusable row.

A row is unusable when its values are NaN/inf or its squared norm overflows float32 (||x||^2 > 3.4e38, e.g. one
value above 1.8e19): every SAE loss squares it, so such a row makes the loss inf or, averaged through the
activation scale, silently swamps every other row.
"""

from __future__ import annotations

import torch

from saeforge.activations.manifest import Stats

F32_MAX = float(torch.finfo(torch.float32).max)


def centred_sum_sq(sum_sq: float, sum_x_sq_norm: float, n: float) -> float | None:
    """sum_r ||x_r - mean||^2 = sum_sq - ||sum_r x_r||^2 / n from float64 sums, or None where it is undefined:
    fewer than two rows, or no variance beyond float64 rounding (below 1e-10 of sum_sq). Every FVU divides by
    it, so degenerate data gives an undefined FVU (null in JSON), never a 0.0 or a huge number."""
    if n < 2:
        return None
    total = sum_sq - sum_x_sq_norm / n
    return total if total > 1e-10 * sum_sq else None


def unusable_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool [n] of rows x [n, d] whose values are not finite or whose float32 squared norm overflows."""
    x = x.float()
    return ~torch.isfinite((x * x).sum(dim=-1))


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
