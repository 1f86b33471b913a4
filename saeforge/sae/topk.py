"""TopK SAE. Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093.

    pre   = (x - b_dec) @ W_enc + b_enc
    z     = ReLU(TopK_k(pre))                         (the k largest pre-activations of each token)
    x_hat = z @ W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + alpha * AuxK     (alpha = 1/32)

AuxK: the k_aux (default d_in // 2) largest pre-activations among dead latents reconstruct the detached residual
x - x_hat. Decoder rows are unit norm (the gradient component parallel to each row is removed before the step,
rows are renormalised after it); W_enc starts as W_dec.T; b_dec starts at the geometric median of a sample.
Selection runs without autograd; `kernels.gather_preacts` and `kernels.sparse_decode` carry the gradient through
the k selected latents only.

The `screen` setting (`TopKFamilySAE._screens`) may find the top k through the certified bf16 screen instead of
the dense fp32 pre-activations (`saeforge.sae.screen`: the real-arithmetic TopK, with fp32 values).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saeforge.sae import kernels, screen
from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.registry import register_architecture
from saeforge.sae.training import TopKFamilySAE


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """[..., d_sae] -> [..., d_sae]: ReLU of the k largest entries of each row, zeros elsewhere."""
    top = pre.topk(k, dim=-1, sorted=False)
    return pre.new_zeros(pre.shape).scatter(-1, top.indices, top.values.relu())


class TopKSAE(SAE):
    """Inference TopK SAE (SAELens `topk`: top-k of the pre-activations, then ReLU)."""

    architecture = "topk"
    cfg_keys = ("k",)

    def activation(self, pre: Tensor) -> Tensor:
        return topk_relu(pre, self.cfg.k)

    def saved_cfg(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}


class TopKTrainingSAE(TopKSAE, TopKFamilySAE):
    architecture = "topk"
    inference_architecture = "topk"
    description = "top-k latents per token, AuxK loss on dead latents"

    def _inference_config(self) -> dict:
        return {"k": self.cfg.k}

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        y = inp.y
        xc = inp.x - self.b_pre
        if self._screens(inp.dead_mask):
            sel = screen.screened_topk(xc.detach(), self.W_enc.detach(), self.b_enc.detach(), self.cfg.k)
            # the screen runs on one rank's whole SAE (never latent-sharded), so its pairs are padded
            pre, pairs = None, kernels.Pairs.padded(sel.indices)
            vals = self._gather(xc, sel.values.reshape(-1), pairs, selected=True).relu()
        else:
            pre = self._pre_no_grad(xc)
            pairs = self._pairs(self._topk(pre, self.cfg.k)[1])
            vals = self._gather(xc, pre, pairs).relu()
        x_hat = self._decode_sparse(pairs, vals) + self.b_dec
        mse = (x_hat - y).pow(2).sum(-1).mean()
        auxk = self._auxk(xc, pre, (y - x_hat).detach(), inp.dead_mask)
        return self._output(y, x_hat, pairs, vals, {"mse": mse, "auxk": auxk})


register_architecture(training=TopKTrainingSAE, inference=TopKSAE)
