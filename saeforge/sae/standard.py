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

from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.rates import scaled_lr
from saeforge.sae.registry import register_architecture
from saeforge.sae.training import PenaltySAE

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
        z = self.encode(inp.x)
        x_hat = self.decode(z)
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        l1 = (z * self.decoder_norms()).sum(-1).mean()
        losses = {"mse": mse, "l1": self._lambda(inp) * l1}
        return self._output(inp, x_hat, z, losses)


register_architecture(training=StandardTrainingSAE, inference=StandardSAE, aliases=("relu",))
