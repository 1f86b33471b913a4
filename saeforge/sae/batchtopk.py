"""BatchTopK SAE. Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv 2412.06410.

Training keeps the k * B largest ReLU'd pre-activations of the whole batch (the global batch under data
parallelism), so L0 is k on average but varies per token. Inference must not depend on the batch: a threshold
theta, a moving average of the smallest kept activation, replaces the batch rule, and `export` writes a
`jumprelu` SAE with threshold theta for every latent:

    training:  z = ReLU(pre) * [ReLU(pre) is among the k*B largest of the batch]
    inference: z = ReLU(pre) * [pre > theta]
    loss = mean_b ||x - x_hat||^2 + alpha * AuxK       (AuxK, unit-norm decoder, init: as TopK)
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeforge.sae.base import Collectives, TrainStepInput, TrainStepOutput
from saeforge.sae.config import TrainingSAEConfig
from saeforge.sae.training import TopKFamilySAE


class BatchTopKTrainingSAE(TopKFamilySAE):
    architecture = "batchtopk"
    inference_architecture = "jumprelu"

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))

    def encode(self, x: Tensor) -> Tensor:
        """Per-token inference rule with the estimated threshold (what the exported SAE computes)."""
        pre = self.pre_acts(x)
        return pre.relu() * (pre > self.threshold)

    def _inference_state(self, s: float) -> dict[str, Tensor]:
        return {**self._folded(s), "threshold": self.threshold.double().expand(self.d_sae).clone()}

    @torch.no_grad()
    def _select(self, pre: Tensor, collectives: Collectives) -> tuple[Tensor, Tensor]:
        """Batch top-k over all ranks: pre [B, d_sae] -> idx [B, w], keep [B, w] bool (w = most kept in a row).

        Also moves the threshold estimate towards the smallest kept activation of the global batch.
        """
        acts = pre.relu()
        n_global = int(collectives.all_reduce_sum(torch.tensor(pre.shape[0], device=pre.device)))
        n_keep = self.cfg.k * n_global
        local_top = acts.flatten().topk(min(n_keep, acts.numel())).values
        candidates = collectives.all_gather_cat(local_top)
        tau = candidates.topk(min(n_keep, candidates.numel())).values[-1]
        width = max(1, int(((acts >= tau) & (acts > 0)).sum(1).max()))
        top = acts.topk(width, dim=1)
        keep = (top.values >= tau) & (top.values > 0)
        local_min = torch.where(keep, top.values, torch.inf).min().reshape(1)
        smallest = collectives.all_gather_cat(local_min).min()
        if torch.isfinite(smallest) and self.training:
            m = self.cfg.threshold_momentum if self.threshold_updates > 0 else 0.0
            self.threshold.mul_(m).add_((1.0 - m) * smallest)
            self.threshold_updates += 1
        return top.indices, keep

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        x = inp.x
        xc = x - self.b_dec
        pre = self._pre_no_grad(xc)
        idx, keep = self._select(pre, inp.collectives)
        vals = self._gather(xc, pre, idx).relu() * keep
        x_hat = self._decode_sparse(idx, vals) + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        auxk = self._auxk(xc, pre, (x - x_hat).detach(), inp.dead_mask)
        losses = {"mse": mse, "auxk": auxk}
        fired = self._fired(idx, vals, self.d_sae)
        return TrainStepOutput(x_hat, mse + auxk, losses, fired, fired.sum() / x.shape[0])
