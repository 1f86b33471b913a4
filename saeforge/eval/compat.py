"""SAELens's and SAEBench's metric definitions, computed exactly, beside saeforge's own (which stay as they are).

Where the two vocabularies differ (docs/evaluation.md has the whole table):

    saeforge                    SAELens / SAEBench (`sae_lens.evals`)           `compat="saelens"` key
    mse: per element,           mse: per token, summed over d_in,               saelens.mse
      sum ||x - x_hat||^2 / (n d)  mean over tokens
    shrinkage: one global ratio relative_reconstruction_bias: per eval batch    saelens.relative_reconstruction_bias
      sum ||x_hat||^2 / sum <x,x_hat>  mean||x_hat||^2 / mean<x,x_hat>, then
                                  the mean of the batch ratios
    explained_variance_legacy:  explained_variance_legacy: per token, with the  saelens.explained_variance_legacy
      centred by the store mean   batch mean (depends on the eval batch)
    explained_variance = 1-fvu  explained_variance (the same, streamed)         saelens.explained_variance
    ce_loss_score: special      ce_loss_score: every position scored and        saelens.ce_loss_score
      tokens neither spliced      spliced (BOS included), zero ablation         (and saelens.kl_div_score, ...)
      nor scored

The SAELens reconstruction metrics depend on how tokens are grouped into eval batches: pass batches as SAELens
forms them (the flattened tokens of each batch of contexts) to reproduce its numbers exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from saeforge.activations.stats import centred_sum_sq
from saeforge.sae.base import SAE

COMPAT_MODES = ("saeforge", "saelens")
PREFIX = "saelens."
# downstream_scores keys reported again, prefixed, with special tokens spliced and scored (SAELens's convention).
DOWNSTREAM_KEYS = (
    "ce_loss_clean",
    "ce_loss_with_sae",
    "ce_loss_zero_ablation",
    "ce_loss_score",
    "kl_div_score",
)


class SAELensAccumulator:
    """Streams batches x [B, d_in] and returns `sae_lens.evals.get_sparsity_and_variance_metrics`'s scalars."""

    def __init__(self, sae: SAE):
        self.sae = sae
        self.per_token: dict[str, list[Tensor]] = {
            k: [] for k in ("mse", "cossim", "l2_ratio", "explained_variance_legacy", "l0", "l1")
        }
        self.per_batch: list[float] = []
        self.sum_x: Tensor | None = None
        self.sum_sq = 0.0
        self.sum_err = 0.0
        self.n = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        p = self.sae.W_dec
        x = x.to(p.device, p.dtype)
        z = self.sae.encode(x)
        x_hat = self.sae.decode(z)
        err = (x - x_hat).pow(2).sum(-1)
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        safe_in = torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)
        centred = (x - x.mean(0)).pow(2).sum(-1)
        self.per_token["mse"].append(err)
        self.per_token["cossim"].append(((x / norm_in[:, None]) * (x_hat / norm_out[:, None])).sum(-1))
        self.per_token["l2_ratio"].append(norm_out / safe_in)
        self.per_token["explained_variance_legacy"].append(1 - err / centred)
        self.per_token["l0"].append((z != 0).sum(-1).to(x.dtype))
        self.per_token["l1"].append(z.abs().sum(-1))
        self.per_batch.append(float(norm_out.pow(2).mean() / (x * x_hat).sum(-1).mean()))
        x64 = x.double().cpu()
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        self.sum_err += float((x64 - x_hat.double().cpu()).pow(2).sum())
        self.n += x.shape[0]

    def tap(self, batches: Iterable[Tensor]) -> Iterator[Tensor]:
        """Yields `batches` unchanged, updating on each: lets another consumer stream them once."""
        for x in batches:
            self.update(x)
            yield x

    def result(self) -> dict[str, float]:
        """{"saelens.<key>": value}; keys as `sae_lens.evals` names them."""
        if self.n == 0:
            raise ValueError("no activations were evaluated: the batches were empty")
        out = {k: float(torch.cat(v).mean()) for k, v in self.per_token.items()}
        out["relative_reconstruction_bias"] = sum(self.per_batch) / len(self.per_batch)
        total = centred_sum_sq(self.sum_sq, float(self.sum_x.pow(2).sum()), self.n)
        out["explained_variance"] = None if total is None else 1 - self.sum_err / total
        if total is None:  # per-token 1 - err / ||x - mean||^2 divides by zero as well
            out["explained_variance_legacy"] = None
        return {PREFIX + k: v for k, v in out.items()}


def saelens_downstream(scores: dict[str, Any]) -> dict[str, Any]:
    """downstream_scores(...) run with no position special -> the SAELens-convention keys, prefixed."""
    return {PREFIX + k: scores[k] for k in DOWNSTREAM_KEYS if k in scores}
