"""Reconstruction and sparsity metrics streamed over any number of activation batches.

Every sum is accumulated in float64, so the result does not depend on how the tokens are split into batches
(except `explained_variance_legacy`, which is defined per batch, as SAELens defines it).
Definitions and their sources are in docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from saeforge.activations.stats import centred_sum_sq
from saeforge.sae.base import SAE

# A latent is "dead" if it never fired in the tokens seen. That only means something if a latent of density
# DEAD_DENSITY would have fired with probability DEAD_CONFIDENCE: (1 - p)^N <= 1 - confidence.
DEAD_DENSITY = 1e-4
DEAD_CONFIDENCE = 0.99
DENSE_THRESHOLDS = {"dense_fraction_10": 0.10, "dense_fraction_30": 0.30}
L0_QUANTILES = (0.1, 0.5, 0.9, 0.99)
_EPS = 1e-12


def limited_batches(batches: Iterator[Tensor], tokens: int | None) -> Iterator[Tensor]:
    """Yields batches [B, d_in] until `tokens` rows have been yielded (the last one cut); all if None."""
    seen = 0
    for x in batches:
        if tokens is not None:
            x = x[: tokens - seen]
        if x.shape[0]:
            yield x
        seen += x.shape[0]
        if tokens is not None and seen >= tokens:
            return


def dead_density_floor(n_tokens: int, confidence: float = DEAD_CONFIDENCE) -> float:
    """Smallest density a latent can have and still fire at least once in `n_tokens` tokens with `confidence`.

    Solves 1 - exp(-p N) = confidence, i.e. p = ln(1 / (1 - confidence)) / N (Poisson limit of (1 - p)^N).
    """
    return math.log(1.0 / (1.0 - confidence)) / max(n_tokens, 1)


def tokens_needed_for_dead(density: float = DEAD_DENSITY, confidence: float = DEAD_CONFIDENCE) -> int:
    """Tokens needed so that a latent of `density` fires at least once with `confidence`."""
    return math.ceil(math.log(1.0 / (1.0 - confidence)) / density)


class StreamAccumulator:
    """Accumulates one SAE's reconstruction and sparsity statistics over batches x [B, d_in].

    neighbours: optional [d_sae] long, for each latent the index of its nearest decoder row (see
        `dictionary.decoder_neighbours`); when given, co-firing with that neighbour is counted for the
        absorption proxy.
    """

    def __init__(self, sae: SAE, neighbours: Tensor | None = None):
        self.sae = sae
        p = sae.W_dec
        self.device, self.dtype = p.device, p.dtype
        d_in, d_sae = sae.d_in, sae.d_sae
        f64 = dict(dtype=torch.float64, device=self.device)
        self.n_tokens = 0
        self.sum_x = torch.zeros(d_in, **f64)
        self.sums = torch.zeros(9, **f64)
        self.n_legacy = 0
        self.fires = torch.zeros(d_sae, dtype=torch.int64, device=self.device)
        self.l0_hist = torch.zeros(d_sae + 1, dtype=torch.int64, device=self.device)
        self.neighbours = None if neighbours is None else neighbours.to(self.device)
        self.cofires = torch.zeros(d_sae, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Adds a batch x [B, d_in] (any float dtype; cast to the SAE's dtype for the forward pass)."""
        if x.ndim != 2 or x.shape[1] != self.sae.d_in:
            raise ValueError(f"expected activations [batch, {self.sae.d_in}], got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        x = x.to(self.device, self.dtype)
        z = self.sae.encode(x)
        x_hat = self.sae.decode(z)
        active = z != 0
        x64, xh64 = x.double(), x_hat.double()
        err = (x64 - xh64).pow(2).sum(-1)
        x_sq = x64.pow(2).sum(-1)
        xh_sq = xh64.pow(2).sum(-1)
        dot = (x64 * xh64).sum(-1)
        x_norm, xh_norm = x_sq.sqrt(), xh_sq.sqrt()
        cos = dot / (x_norm * xh_norm).clamp_min(_EPS)
        centred = (x64 - x64.mean(0)).pow(2).sum(-1)
        ok = centred > 0
        self.n_legacy += int(ok.sum())
        rows, cols = active.nonzero(as_tuple=True)  # sparse: cheaper than reductions over dense [B, d_sae]
        l0 = torch.bincount(rows, minlength=x.shape[0])
        self.sums += torch.stack(
            [
                x_sq.sum(),
                err.sum(),
                xh_sq.sum(),
                dot.sum(),
                cos.sum(),
                (xh_norm / x_norm.clamp_min(_EPS)).sum(),
                (err.sqrt() / x_norm.clamp_min(_EPS)).sum(),
                (1 - err[ok] / centred[ok]).sum(),
                z[rows, cols].abs().double().sum(),
            ]
        )
        self.sum_x += x64.sum(0)
        self.n_tokens += x.shape[0]
        self.fires += torch.bincount(cols, minlength=self.sae.d_sae)
        self.l0_hist += torch.bincount(l0, minlength=self.sae.d_sae + 1)
        if self.neighbours is not None:
            both = active[rows, self.neighbours[cols]]
            self.cofires += torch.bincount(cols[both], minlength=self.sae.d_sae)

    def mean_activation(self) -> Tensor:
        """[d_in] float64 mean of the activations seen (used for mean ablation)."""
        return self.sum_x / max(self.n_tokens, 1)

    def density(self) -> np.ndarray:
        """[d_sae] float64 fraction of tokens on which each latent fired."""
        return (self.fires.double() / max(self.n_tokens, 1)).cpu().numpy()

    def result(self) -> dict[str, float | int | bool | None]:
        """Flat reconstruction and sparsity metrics (keys documented in docs/evaluation.md)."""
        n = self.n_tokens
        if n == 0:
            raise ValueError("no activations were evaluated: the batches were empty")
        s = self.sums.tolist()
        sum_x_sq, sum_err, sum_xh_sq, sum_dot, sum_cos, sum_l2r, sum_nl2, sum_legacy, sum_l1 = s
        total = centred_sum_sq(sum_x_sq, float(self.sum_x.pow(2).sum()), n)
        fvu = None if total is None else sum_err / total
        density = self.density()
        d_sae = self.sae.d_sae
        dead = int((self.fires == 0).sum())
        out: dict[str, float | int | bool | None] = {
            "tokens": n,
            "fvu": fvu,
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "explained_variance_legacy": sum_legacy / self.n_legacy if self.n_legacy else None,
            "mse": sum_err / (n * self.sae.d_in),
            "normalized_l2": sum_nl2 / n,
            "cosine": sum_cos / n,
            "l2_ratio": sum_l2r / n,
            "shrinkage": sum_xh_sq / sum_dot if sum_dot != 0 else None,
            "l1": sum_l1 / n,
        }
        out.update(self._l0_stats())
        floor = dead_density_floor(n)
        out.update(
            {
                "dead_count": dead,
                "dead_fraction": dead / d_sae,
                "dead_density_floor": floor,
                "dead_reliable": n >= tokens_needed_for_dead(),
                "alive_count": d_sae - dead,
            }
        )
        for key, threshold in DENSE_THRESHOLDS.items():
            out[key] = float((density > threshold).mean())
        alive = density[density > 0]
        out["log10_density_median"] = float(np.median(np.log10(alive))) if alive.size else None
        return out

    def _l0_stats(self) -> dict[str, float]:
        hist = self.l0_hist.double()
        values = torch.arange(hist.numel(), dtype=torch.float64, device=hist.device)
        n = float(hist.sum())
        mean = float((hist * values).sum()) / n
        var = float((hist * (values - mean) ** 2).sum()) / n
        cum = torch.cumsum(hist, 0)
        out = {"l0": mean, "l0_std": math.sqrt(var)}
        for q in L0_QUANTILES:
            # inverted-CDF quantile: the smallest l0 with at least q * n tokens at or below it
            idx = int(torch.searchsorted(cum, torch.tensor(q * n, dtype=torch.float64, device=cum.device)))
            out[f"l0_p{round(q * 100)}"] = float(min(idx, hist.numel() - 1))
        out["l0_max"] = float(torch.nonzero(hist).max())
        return out

    def absorption_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """([d_sae] fires, [d_sae] co-fires with the nearest decoder neighbour), int64 arrays."""
        return self.fires.cpu().numpy(), self.cofires.cpu().numpy()
