"""Matryoshka BatchTopK SAE. Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders", arXiv 2503.17547.

Latents are split into nested groups (`group_sizes`, summing to d_sae). Each prefix of groups must reconstruct x
on its own, so early latents learn general features and later ones refine them:

    z    = BatchTopK(pre)                                       (as in BatchTopK, threshold for inference)
    loss = sum_m w_m mean_b ||x - (z[:, :m] @ W_dec[:m] + b_dec)||^2 + alpha * AuxK
           (m over the cumulative group ends; the last prefix is the whole SAE, w = 1 for it and
            `prefix_weight` for the others: 1 is the paper's equal weights)

The default prefix_weight is 1/32, not the paper's 1: measured in docs/architectures.md ("Matryoshka's prefix
weight"), equal weights recover flat planted features at MMCS 0.51 (the early groups become blends) and 1/32 at
0.86, while on a toy with planted parent/child features 1/32 still cuts BatchTopK's absorption from 0.33 to 0.22
(equal weights: 0.12).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from saeforge.sae.base import TrainStepInput, TrainStepOutput
from saeforge.sae.batchtopk import BatchTopKTrainingSAE
from saeforge.sae.registry import register_architecture
from saeforge.sparsity import setting

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


def default_group_sizes(d_sae: int, n_groups: int = 5) -> list[int]:
    """Doubling nested groups, e.g. d_sae=1024 -> [64, 64, 128, 256, 512] (the last one takes the rest)."""
    sizes: list[int] = []
    first = max(1, d_sae >> (n_groups - 1))
    size = first
    while sum(sizes) + size < d_sae and len(sizes) < n_groups - 1:
        sizes.append(size)
        size = sum(sizes)
    sizes.append(d_sae - sum(sizes))
    return sizes


DEFAULT_PREFIX_WEIGHT = 1 / 32


class MatryoshkaFields(BaseModel):
    group_sizes: list[int] | None = setting("group_sizes")
    prefix_weight: float = Field(
        default=DEFAULT_PREFIX_WEIGHT,
        ge=0,
        description="matryoshka: weight of each nested prefix's reconstruction loss but the whole SAE's (which "
        "weighs 1); 1 is the paper's equal weights (least absorption, but features without hierarchy blend), "
        "0 is BatchTopK; default 1/32 (docs/architectures.md)",
    )


class MatryoshkaTrainingSAE(BatchTopKTrainingSAE):
    architecture = "matryoshka"
    inference_architecture = "jumprelu"
    description = "batch top-k with nested prefix reconstruction losses"
    config_fields = MatryoshkaFields
    sparsity_settings = (*BatchTopKTrainingSAE.sparsity_settings, "group_sizes")

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        super().check_config(cfg)
        if cfg.group_sizes is None:
            cfg.group_sizes = default_group_sizes(cfg.d_sae)
        if any(g <= 0 for g in cfg.group_sizes) or sum(cfg.group_sizes) != cfg.d_sae:
            raise ValueError(
                f"group_sizes={cfg.group_sizes} must be positive and sum to d_sae={cfg.d_sae} "
                f"(they sum to {sum(cfg.group_sizes)})"
            )

    @classmethod
    def known_shortfall(cls, cfg: TrainingSAEConfig) -> str | None:
        # bench/quality.py toy (512 planted features without hierarchy, d_sae 512; docs/architectures.md)
        if cfg.prefix_weight <= DEFAULT_PREFIX_WEIGHT:
            return None
        return (
            f"prefix_weight {cfg.prefix_weight:g} (default {DEFAULT_PREFIX_WEIGHT:g}): the nested prefixes' "
            "losses pull the early latents toward blends of features without hierarchy; on the toy of "
            "bench/quality.py (512 flat features, d_sae 512, 4.9 M tokens) prefix_weight 1 (the paper's) "
            "recovered MMCS 0.51, 1/8 0.79, 1/16 0.83, 1/32 0.86, and more tokens or latents did not help; "
            "a larger weight buys less feature absorption (docs/architectures.md)"
        )

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        self.prefix_ends = list(itertools.accumulate(cfg.group_sizes))

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        y = inp.y
        xc = inp.x - self.b_pre
        pre = None if self._screens(inp.dead_mask) else self._pre_no_grad(xc)
        pairs, kept = self._select(xc.detach(), pre, inp.collectives)
        vals = self._gather(xc, kept, pairs, selected=True).relu()
        n_groups = len(self.prefix_ends)
        group = torch.bucketize(pairs.latents, torch.tensor(self.prefix_ends, device=y.device), right=True)
        order, by_group = pairs.regroup(group, n_groups)
        # one decode, each pair once: row g * B + b is token b's group-g part of the reconstruction
        parts = self._decode_sparse(by_group, vals[order]).view(n_groups, *y.shape)
        losses: dict[str, Tensor] = {}
        x_hat = self.b_dec.expand_as(y)
        for part, end in zip(parts, self.prefix_ends, strict=True):
            x_hat = x_hat + part
            weight = 1.0 if end == self.prefix_ends[-1] else self.cfg.prefix_weight
            losses[f"mse_prefix_{end}"] = weight * (x_hat - y).pow(2).sum(-1).mean()
        losses["auxk"] = self._auxk(xc, pre, (y - x_hat).detach(), inp.dead_mask)
        return self._output(y, x_hat, pairs, vals, losses)


register_architecture(training=MatryoshkaTrainingSAE)
