"""Standard SAE: ReLU + L1 weighted by decoder row norms.

Anthropic, "Circuits Updates - April 2024" (transformer-circuits.pub/2024/april-update, "Training SAEs"):
decoder rows free in norm (initialised at norm 0.1 with W_enc = W_dec.T), and the sparsity penalty is the L1 norm
of the latents weighted by their decoder row norms, so shrinking W_dec cannot buy a smaller penalty:

    z     = ReLU((x - b_dec) @ W_enc + b_enc)
    x_hat = z @ W_dec + b_dec
    loss  = mean_b ||x - x_hat||^2 + lambda * mean_b sum_i z_i ||W_dec[i]||
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeforge.sae import kernels
from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.penalty import PenaltySAE
from saeforge.sae.rates import scaled_lr
from saeforge.sae.registry import register_architecture

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


class StandardSAE(SAE):
    """Inference ReLU SAE (SAELens `standard`; the ReLU is `SAE.activation`)."""

    architecture = "standard"


class StandardTrainingSAE(StandardSAE, PenaltySAE):
    architecture = "standard"
    inference_architecture = "standard"
    description = "ReLU with an L1 penalty weighted by decoder row norms"
    # The toy of bench/quality.py: MMCS 0.87 integral-only, 0.80 with gain 1 (docs/architectures.md).
    default_controller_gain = 0.0

    @staticmethod
    def default_initial_coefficient(cfg: TrainingSAEConfig) -> float:
        # A latent of magnitude a saves ~a^2 of MSE and costs lambda * a; with E||x||^2 = d_in shared by L0
        # latents, a ~ sqrt(d_in / L0). Start at a tenth of that and let the controller move it.
        return 0.1 * math.sqrt(cfg.d_in / cfg.target_l0)

    @staticmethod
    def optim_defaults(d_sae: int, total_steps: int) -> dict[str, Any]:
        # Anthropic, "Circuits Updates - April 2024": Adam (0.9, 0.999), lambda warmed up over the first 5% of
        # training, lr decayed linearly to zero over the last 20%, gradient norm clipped to 1. Their lr 5e-5 is
        # for billions of tokens; the lr is Gao et al.'s d_sae-scaled rule (docs/architectures.md).
        return dict(
            lr=scaled_lr(d_sae),
            betas=(0.9, 0.999),
            eps=1e-8,
            lr_schedule="linear",
            lr_warmup_steps=0,
            lr_decay_steps=int(total_steps * 0.2),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=int(total_steps * 0.05),
            grad_clip_norm=1.0,
        )

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        pre = self.pre_acts(inp.x)
        active = pre.detach() > 0
        if self._sparse_enough(active):
            return self._sparse_forward(inp, inp.x - self.b_pre, pre.detach(), active)
        z = self.activation(pre)
        x_hat = self.decode(z)
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        l1 = (z * self.decoder_norms()).sum(-1).mean()
        losses = {"mse": mse, "l1": self._lambda(inp) * l1}
        return self._output(inp, x_hat, z, losses)

    def _sparse_forward(
        self, inp: TrainStepInput, xc: Tensor, pre: Tensor, active: Tensor
    ) -> TrainStepOutput:
        """The same loss as the dense path, from the active (token, latent) pairs only: z is zero elsewhere and
        ReLU passes no gradient there, so no dense [B, d_sae] gradient and no dense decode are needed."""
        tokens, latents = active.nonzero(as_tuple=True)  # token-major
        pairs = kernels.Pairs.of_tokens(latents, tokens, pre.shape[0])
        vals = self._gather(xc, pre, pairs)  # > 0 at every pair: ReLU's gradient is 1 there
        x_hat = self._decode_sparse(pairs, vals) + self.b_dec
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        l1 = (vals * self.decoder_norms()[latents]).sum() / pre.shape[0]
        losses = {"mse": mse, "l1": self._lambda(inp) * l1}
        fired = torch.bincount(latents, minlength=self.d_sae).to(inp.x.dtype)
        return self._output_fired(inp, x_hat, fired, losses)


register_architecture(training=StandardTrainingSAE, inference=StandardSAE, aliases=("relu",))
