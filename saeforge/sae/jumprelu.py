"""JumpReLU SAE. Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders", arXiv 2407.14435 (the Gemma Scope recipe), trained by default with the losses of Anthropic's
"Circuits Updates - January 2025" (Conerly et al.):

    z     = JumpReLU_theta(pre) = pre * H(pre - theta)        (per-latent threshold theta)
    loss  = mean_b ||x - x_hat||^2 + lambda * S + mu * mean_b sum_i ReLU(theta_i - pre_i) ||W_dec[i]||
    S     = mean_b sum_i tanh(c z_i ||W_dec[i]||)            (sparsity_loss "tanh", the default)
          = mean_b sum_i H(pre_i - theta_i)                  (sparsity_loss "l0", the GDM paper's)

H has no useful gradient, so theta gets the paper's straight-through estimators with a rectangle kernel
K(u) = 1[|u| < 1/2] of bandwidth epsilon (pre gets the plain ReLU-like gradient through z):

    d JumpReLU / d theta = -(theta / epsilon) K((pre - theta) / epsilon)
    d H(pre - theta) / d theta = -(1 / epsilon) K((pre - theta) / epsilon)

The tanh loss reaches the encoder through the firing latents, so the controller's lambda moves L0 at once; the
L0 loss reaches only theta, which Adam moves ~lr per step, and needs long runs (`tokens_needed`). The
pre-activation term (weight mu, `pre_act_coefficient`; theta detached) lifts latents that stopped firing:
Adam scales a dead latent's small gradient up to a full step.

Threshold parametrisation: theta is a raw parameter, clamped at 0 after each optimiser step. theta lives in
pre-activation units, exactly like b_enc, and Adam moves every parameter by about lr per step whatever its
gradient's size, so theta moves as fast as the bias it competes with. A log-parametrised theta moves by about
lr * theta per step, which for a small initial theta is nearly nothing (SAELens issue #494).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from saeforge.sae import kernels
from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.penalty import PenaltySAE
from saeforge.sae.rates import capped, penalty_lr
from saeforge.sae.registry import register_architecture
from saeforge.sae.training import Scales
from saeforge.sparsity import setting

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


def rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """pre [..., d_sae], threshold [d_sae] -> pre * H(pre - threshold), with the threshold STE."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold / eps) * rectangle((pre - threshold) / eps) * grad
        return grad_pre, grad_threshold.reshape(-1, pre.shape[-1]).sum(0), None


class StepFunction(torch.autograd.Function):
    """pre [..., d_sae], threshold [d_sae] -> H(pre - threshold), with the threshold STE; with `to_pre` the
    pre-activations get the mirrored estimate +(1 / epsilon) K((pre - theta) / epsilon) (the paper: none)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float, to_pre: bool = False) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.to_pre = bandwidth, to_pre
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        local = (1.0 / eps) * rectangle((pre - threshold) / eps) * grad
        grad_pre = local if ctx.to_pre else None
        return grad_pre, -local.reshape(-1, pre.shape[-1]).sum(0), None, None


class JumpReLUSAE(SAE):
    """Inference JumpReLU SAE (SAELens `jumprelu`: ReLU(pre) where pre > threshold)."""

    architecture = "jumprelu"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)


class JumpReLUFields(BaseModel):
    bandwidth: float = setting("bandwidth", default=0.05)
    initial_threshold: float = Field(default=0.05, ge=0, description="jumprelu: initial per-latent threshold")
    l0_pre_gradient: bool = Field(
        default=False,
        description="jumprelu: the L0 penalty's straight-through gradient also reaches the pre-activations "
        "(the encoder), not only the thresholds (false: the paper's estimator)",
    )
    sparsity_loss: Literal["l0", "tanh"] = Field(
        default="tanh",
        description="jumprelu: l0 = sum_i H(pre - theta) (GDM), tanh = sum_i tanh(c z_i ||W_dec[i]||) (Anthropic "
        "January 2025; its gradient reaches the encoder through the firing latents)",
    )
    tanh_scale: float = Field(default=1.0, gt=0, description="jumprelu: c of the tanh sparsity loss")
    pre_act_coefficient: float = Field(
        default=1e-3,
        ge=0,
        description="jumprelu: weight of the pre-activation loss sum_i ReLU(theta_i - pre_i) ||W_dec[i]|| "
        "(Anthropic January 2025), which lifts latents that stopped firing; 0 disables",
    )


class JumpReLUTrainingSAE(JumpReLUSAE, PenaltySAE):
    architecture = "jumprelu"
    inference_architecture = "jumprelu"
    description = "JumpReLU thresholds with an L0 penalty (straight-through estimator)"
    config_fields = JumpReLUFields
    # dense over sparse step, by the firing fraction (the band's pairs come on top): 5.98x at 0.26%, 1.68x at
    # 6.25%, 1.25x at 12.5%, 0.57x at 25% (docs/benchmarks.md)
    sparse_max_density = 1 / 8
    sparsity_settings = (
        *PenaltySAE.sparsity_settings,
        "bandwidth",
        "initial_threshold",
        "l0_pre_gradient",
        "sparsity_loss",
        "tanh_scale",
        "pre_act_coefficient",
    )

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        with torch.no_grad():
            self.threshold.fill_(cfg.initial_threshold)

    @staticmethod
    def default_initial_coefficient(cfg: TrainingSAEConfig) -> float:
        # A latent carrying ~E||x||^2 / L0 = d_in / L0 of MSE is worth its L0 cost lambda; start at a tenth.
        return 0.1 * cfg.d_in / cfg.target_l0

    @staticmethod
    def optim_defaults(d_sae: int, total_steps: int) -> dict[str, Any]:
        # Rajamanoharan et al. 2024 (arXiv 2407.14435) / Gemma Scope: Adam betas (0, 0.999), eps 1e-8,
        # a 1,000-step lr warm-up, sparsity coefficient warmed up linearly over 10,000 steps. Their lr 7e-5 is
        # for billions of tokens: Adam moves a threshold ~lr per step, and in a 4.9 M-token run it cannot follow
        # the controller; penalty_lr was measured on the toy (docs/architectures.md).
        return dict(
            lr=penalty_lr(d_sae),
            betas=(0.0, 0.999),
            eps=1e-8,
            lr_schedule="constant",
            lr_warmup_steps=capped(1_000, total_steps, 0.05),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=capped(10_000, total_steps, 0.1),
            grad_clip_norm=0.0,
        )

    @classmethod
    def tokens_needed(cls, cfg: TrainingSAEConfig) -> tuple[int, str] | None:
        if cfg.sparsity_loss != "l0" or cfg.target_l0 is None:
            return None
        # chanind & Garriga-alonso 2025 (LessWrong, "Anthropic's JumpReLU training method is really good"): the
        # L0 loss barely moves L0 before ~1-2 B tokens; here at 4.9 M tokens it ended at half its target L0.
        return (
            2_000_000_000,
            "set sparsity_loss: tanh (the default), which reached the target at 4.9 M tokens",
        )

    def firing_pre(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.pre_acts(x), self.b_enc, self.threshold.detach()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.threshold.clamp_(min=0.0)

    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        return {**self._folded(s), "threshold": self.threshold.detach().double()}

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        pre = self.pre_acts(inp.x)
        # every pair a gradient reaches: the firing ones and those within the STE's half-bandwidth below theta
        near = pre.detach() > self.threshold.detach() - self.cfg.bandwidth / 2
        if self._sparse_enough(near):
            return self._sparse_forward(inp, inp.x - self.b_pre, pre.detach(), near)
        z = JumpReLUFunction.apply(pre, self.threshold, self.cfg.bandwidth)
        x_hat = self.decode(z)
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        cfg = self.cfg
        if cfg.sparsity_loss == "tanh":
            sparsity = (cfg.tanh_scale * z * self.decoder_norms()).tanh()
        else:
            sparsity = StepFunction.apply(pre, self.threshold, cfg.bandwidth, cfg.l0_pre_gradient)
        losses = {"mse": mse, cfg.sparsity_loss: self._lambda(inp) * sparsity.sum(-1).mean()}
        if cfg.pre_act_coefficient > 0:
            below = (self.threshold.detach() - pre).relu() * self.decoder_norms()
            losses["pre_act"] = cfg.pre_act_coefficient * below.sum(-1).mean()
        return self._output(inp, x_hat, z, losses)

    def _sparse_forward(self, inp: TrainStepInput, xc: Tensor, pre: Tensor, near: Tensor) -> TrainStepOutput:
        """The dense path's loss and gradients from the pairs `near` [B, d_sae] only. Elsewhere z is 0 and the
        STE kernels are 0, so only the pre-activation loss reaches the other pairs: its pre gradient there is
        -mu ||W_dec[i]|| / B at every pair below theta, written as that constant over all pairs (a column sum,
        one matvec) minus its value at the near pairs not below theta."""
        cfg, n_tokens = self.cfg, pre.shape[0]
        tokens, latents = near.nonzero(as_tuple=True)  # token-major
        pairs = kernels.Pairs.of_tokens(latents, tokens, n_tokens)
        vals = self._gather(xc, pre, pairs)
        theta = self.threshold[latents]
        z = JumpReLUFunction.apply(vals, theta, cfg.bandwidth)  # the band's pairs below theta decode as 0
        x_hat = self._decode_sparse(pairs, z) + self.b_dec
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        norms = self.decoder_norms()
        if cfg.sparsity_loss == "tanh":
            sparsity = (cfg.tanh_scale * z * norms[latents]).tanh()
        else:
            sparsity = StepFunction.apply(vals, theta, cfg.bandwidth, cfg.l0_pre_gradient)
        losses = {"mse": mse, cfg.sparsity_loss: self._lambda(inp) * sparsity.sum() / n_tokens}
        if cfg.pre_act_coefficient > 0:
            # sum_b ReLU(theta - pre) = sum_b (theta - pre) - sum_near min(theta - pre, 0)
            colsum = xc.sum(0) @ self.W_enc + n_tokens * self.b_enc
            gap = (theta.detach() - vals).clamp(max=0.0)
            below = (
                n_tokens * self.threshold.detach()
                - colsum
                - torch.zeros_like(colsum).index_add(0, latents, gap)
            )
            losses["pre_act"] = cfg.pre_act_coefficient * (below * norms).sum() / n_tokens
        fired = torch.bincount(latents[z.detach() > 0], minlength=self.d_sae).to(inp.x.dtype)
        return self._output_fired(inp, x_hat, fired, losses)


register_architecture(training=JumpReLUTrainingSAE, inference=JumpReLUSAE)
