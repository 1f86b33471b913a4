"""BatchTopK SAE. Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv 2412.06410.

Training keeps the k * B largest ReLU'd pre-activations of the whole batch (the global batch under data
parallelism), so L0 is k on average but varies per token. Inference must not depend on the batch: a threshold
theta, a moving average of the smallest kept activation (the batch threshold tau; `_update_threshold`), replaces
the batch rule, and `export` writes a `jumprelu` SAE with threshold theta for every latent. tau moves during
training (it falls as latents align with directions of the data), so the average is short (momentum 0.5): the
per-token rule with theta = tau keeps exactly what the batch rule keeps, and a lagging theta keeps fewer:

    training:  z = ReLU(pre) * [ReLU(pre) is among the k*B largest of the batch]
    inference: z = ReLU(pre) * [pre > theta]
    loss = mean_b ||x - x_hat||^2 + alpha * AuxK       (AuxK, unit-norm decoder, init: as TopK)
    dead:      no kept value above theta in the dead window (5 batches by default; `_fires`: what the export fires)

The kept pairs come from the dense fp32 GEMM (each row offers its 2k largest, `_select`) or, where the `screen`
setting takes it (`TopKFamilySAE._screens`), from the certified bf16 screen over the whole batch
(`screen.screened_batch_topk`: exact values for about 2kB candidates, not the dense kB x d_sae); a batch that screen
does not certify takes each row's exact top 2k through the row-wise screen. All three keep the same pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from saeforge.sae import kernels, screen
from saeforge.sae.base import Collectives, TrainStepInput, TrainStepOutput
from saeforge.sae.registry import register_architecture
from saeforge.sae.training import Scales, TopKFamilySAE

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


def _kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest entry of 1-D `values` (its smallest when it holds k entries or fewer)."""
    if values.numel() <= k:
        return values.min()
    return values.kthvalue(values.numel() - k + 1).values


class BatchTopKFields(BaseModel):
    threshold_momentum: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="batchtopk/matryoshka: EMA momentum of the inference threshold (the batch threshold tau falls "
        "as latents align, so a slow average exports a threshold above it: 0.99 gave held-out L0 8.6 for k 32 "
        "in 147 MiniLM steps, 0.5 gives 32.3; docs/architectures.md)",
    )


class BatchTopKTrainingSAE(TopKFamilySAE):
    """Trains by the batch rule; its `encode` is the exported JumpReLU rule (one threshold for every latent)."""

    architecture = "batchtopk"
    inference_architecture = "jumprelu"
    description = "top k*B latents over the batch; a threshold estimated in training is used at inference"
    config_fields = BatchTopKFields
    sparsity_settings = (*TopKFamilySAE.sparsity_settings, "threshold_momentum")

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))

    def activation(self, pre: Tensor) -> Tensor:
        """Per-token inference rule with the estimated threshold (what the exported SAE computes)."""
        return pre.relu() * (pre > self.threshold)

    def _extras(self) -> dict[str, Tensor]:
        """For the trainer's logs: the inference threshold estimate."""
        return {"threshold": self.threshold.detach().clone()}

    def _fires(self, vals: Tensor) -> Tensor:
        """A kept value fires only above the inference threshold theta: a latent the batch rule keeps just under
        theta would be dead in the exported SAE, so the dead criterion (and AuxK) must see it as dead."""
        return vals > self.threshold

    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        return {**self._folded(s), "threshold": self.threshold.double().expand(self.d_sae).clone()}

    @property
    def _screened_k(self) -> int:
        return 2 * self.cfg.k

    @torch.no_grad()
    def _select(
        self, xc: Tensor, pre: Tensor | None, collectives: Collectives
    ) -> tuple[kernels.Pairs, Tensor]:
        """Batch top-k over all ranks: xc [B, d_in] and its pre-activations pre [B, d_sae] (None: a screened
        step) -> (the kept (token, latent) pairs, n ~ k * B of them, any number per token, zero included,
        token-major; their pre-activations [n]).

        Exact without a top-k over the whole batch: each row offers its m = 2k largest pre-activations (a
        screened step finds them through `screen.screened_topk`), and tau, the (k * B_global)-th largest offer,
        is the batch threshold unless a row's smallest offer is itself >= tau (it might hold more above tau);
        such rows then offer every entry >= tau (their dense rows) and tau is recomputed.
        Also moves the threshold estimate towards the smallest kept activation of the global batch.
        """
        n_rows, d_sae = xc.shape[0], self.W_enc.shape[1]  # this shard's latents under tensor parallelism
        n_keep = self.cfg.k * n_rows * collectives.world_size  # equal slices on every data-parallel rank
        if pre is None and (
            sel := screen.screened_batch_topk(
                xc, self.W_enc.detach(), self.b_enc.detach(), n_keep, collectives
            )
        ):
            smallest = sel.values.min() if len(sel.values) else xc.new_tensor(torch.inf)
            self._update_threshold(collectives.all_gather_cat(smallest.reshape(1)).min())
            return kernels.Pairs.of_tokens(sel.latents, sel.tokens, n_rows), sel.values
        if pre is None:
            sel = screen.screened_topk(
                xc, self.W_enc.detach(), self.b_enc.detach(), min(2 * self.cfg.k, d_sae)
            )
            vals, idx = sel.values, sel.indices
        else:
            vals, idx = kernels.topk_select(pre, min(2 * self.cfg.k, d_sae))
        tau = _kth_largest(collectives.all_gather_cat(vals.flatten()), n_keep)
        last = vals.amin(1)
        saturated = ((last >= tau) & (last > 0)).nonzero().squeeze(1)
        if vals.shape[1] < d_sae and int(collectives.all_reduce_sum(saturated.new_tensor(len(saturated)))):
            if pre is not None:
                dense = pre[saturated]
                width = max(vals.shape[1], int((dense >= tau).sum(1).max())) if len(saturated) else 0
                offers = dense.topk(width, dim=1)
            else:  # every latent that may reach tau, exactly, whatever the rounding of a few-row GEMM
                offers = screen.rows_above(
                    xc[saturated], self.W_enc.detach(), self.b_enc.detach(), tau.expand(len(saturated))
                )
                width = offers[0].shape[1]
            wide_vals = torch.full(
                (n_rows, max(width, vals.shape[1])), -torch.inf, dtype=vals.dtype, device=vals.device
            )
            wide_idx = torch.zeros(wide_vals.shape, dtype=idx.dtype, device=idx.device)
            wide_vals[:, : vals.shape[1]], wide_idx[:, : vals.shape[1]] = vals, idx
            if len(saturated):
                wide_vals[saturated] = -torch.inf
                wide_vals[saturated, : offers[0].shape[1]], wide_idx[saturated, : offers[0].shape[1]] = offers
            vals, idx = wide_vals, wide_idx
            tau = _kth_largest(collectives.all_gather_cat(vals[vals > -torch.inf]), n_keep)
        keep = (vals >= tau) & (vals > 0)
        local_min = torch.where(keep, vals, torch.inf).min().reshape(1)
        self._update_threshold(collectives.all_gather_cat(local_min).min())
        return kernels.Pairs.masked(idx, keep), vals[keep]

    @torch.no_grad()
    def _update_threshold(self, smallest: Tensor) -> None:
        """Moves the inference threshold towards `smallest`, the global batch's smallest kept activation (its
        batch threshold tau): theta <- m * theta + (1 - m) * tau, m = `threshold_momentum`; the first update
        sets theta = tau. Training only; a batch that kept nothing leaves theta as it is."""
        if not (torch.isfinite(smallest) and self.training):
            return
        m = self.cfg.threshold_momentum if self.threshold_updates > 0 else 0.0
        self.threshold.mul_(m).add_((1.0 - m) * smallest)
        self.threshold_updates += 1

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        y = inp.y
        xc = inp.x - self.b_pre
        pre = None if self._screens(inp.dead_mask) else self._pre_no_grad(xc)
        pairs, kept = self._select(xc.detach(), pre, inp.collectives)
        vals = self._gather(xc, kept, pairs, selected=True).relu()
        x_hat = self._decode_sparse(pairs, vals) + self.b_dec
        mse = (x_hat - y).pow(2).sum(-1).mean()
        auxk = self._auxk(xc, pre, (y - x_hat).detach(), inp.dead_mask)
        return self._output(y, x_hat, pairs, vals, {"mse": mse, "auxk": auxk})


register_architecture(training=BatchTopKTrainingSAE)
