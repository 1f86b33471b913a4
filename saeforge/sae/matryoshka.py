"""Matryoshka BatchTopK SAE. Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders", arXiv 2503.17547.

Latents are split into nested groups (`group_sizes`, summing to d_sae). Each prefix of groups must reconstruct x
on its own, so early latents learn general features and later ones refine them:

    z    = BatchTopK(pre)                                       (as in BatchTopK, threshold for inference)
    loss = sum_m mean_b ||x - (z[:, :m] @ W_dec[:m] + b_dec)||^2 + alpha * AuxK
           (m over the cumulative group ends; the last prefix is the whole SAE)
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from saeforge.sae.base import TrainStepInput, TrainStepOutput
from saeforge.sae.batchtopk import BatchTopKTrainingSAE
from saeforge.sae.config import TrainingSAEConfig


class MatryoshkaTrainingSAE(BatchTopKTrainingSAE):
    architecture = "matryoshka"
    inference_architecture = "jumprelu"

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        self.prefix_ends = list(itertools.accumulate(cfg.group_sizes))

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        x = inp.x
        xc = x - self.b_dec
        pre = self._pre_no_grad(xc)
        idx, keep = self._select(pre, inp.collectives)
        vals = self._gather(xc, pre, idx).relu() * keep
        group = torch.bucketize(
            idx.contiguous(), torch.tensor(self.prefix_ends, device=idx.device), right=True
        )
        losses: dict[str, Tensor] = {}
        x_hat = self.b_dec.expand_as(x)
        for g, end in enumerate(self.prefix_ends):
            x_hat = x_hat + self._decode_sparse(idx, vals * (group == g))
            losses[f"mse_prefix_{end}"] = (x_hat - x).pow(2).sum(-1).mean()
        losses["auxk"] = self._auxk(xc, pre, (x - x_hat).detach(), inp.dead_mask)
        fired = self._fired(idx, vals, self.d_sae)
        return TrainStepOutput(
            x_hat, sum(losses.values()), losses, fired, fired.sum() / x.shape[0], self._extras()
        )
