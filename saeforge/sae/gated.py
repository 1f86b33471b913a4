"""Gated SAE. Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders",
arXiv 2404.16014.

A gate decides which latents fire, a magnitude path how much; both share W_enc, tied through r_mag:

    pi_gate = (x - b_dec) @ W_enc + b_gate
    pi_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag
    z       = 1[pi_gate > 0] * ReLU(pi_mag)
    loss    = mean_b ||x - x_hat||^2
            + lambda * mean_b sum_i ReLU(pi_gate)_i ||W_dec[i]||                 (L1 on the gate)
            + mean_b ||x - (ReLU(pi_gate) @ sg(W_dec) + sg(b_dec))||^2           (aux, stop-gradient decoder)

The gate's step function passes no gradient; the L1 and auxiliary terms train the gate path. As in the paper,
decoder rows are kept at unit norm (gradient component parallel to each row removed, rows renormalised after the
step), so the decoder-norm weight is 1; it stays in the formula so the penalty cannot be lowered by shrinking W_dec.
Without the constraint the frozen-decoder auxiliary term and the L1 term chase each other: W_dec shrinks, the gate
grows to compensate, and the SAE collapses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from saeforge.sae import kernels
from saeforge.sae.base import SAE, TrainStepInput, TrainStepOutput
from saeforge.sae.penalty import PenaltySAE
from saeforge.sae.rates import capped, penalty_lr
from saeforge.sae.registry import register_architecture
from saeforge.sae.training import Scales, _affine

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


class GatedSAE(SAE):
    """Inference gated SAE (SAELens `gated`: weights W_enc, b_gate, b_mag, r_mag, W_dec, b_dec; no b_enc)."""

    architecture = "gated"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.b_enc = None
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag) [..., d_sae]."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_gate, x @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0) * pi_mag.relu()

    def pre_acts(self, x: Tensor) -> Tensor:
        """The magnitude path's pre-activations [..., d_sae]."""
        return self._paths(x)[1]


class GatedTrainingSAE(GatedSAE, PenaltySAE):
    architecture = "gated"
    inference_architecture = "gated"
    description = "gated encoder with an L1 penalty on the gate"
    sparsity_settings = (*PenaltySAE.sparsity_settings, "aux_coefficient")
    unit_norm_decoder = True
    # dense over sparse step: 8.05x at 0.26% open, 2.37x at 6.25%, 1.74x at 12.5%, 0.73x at 25% (docs/benchmarks.md)
    sparse_max_density = 1 / 8

    @staticmethod
    def default_initial_coefficient(cfg: TrainingSAEConfig) -> float:
        # A latent of magnitude a ~ sqrt(d_in / L0) saves ~a^2 of MSE and costs lambda * a: lambda ~ a. The
        # controller settled at 1.6-2.9 on the toy from this start (2.0); a tenth of it took 300 steps to get there.
        return math.sqrt(cfg.d_in / cfg.target_l0)

    @staticmethod
    def optim_defaults(d_sae: int, total_steps: int) -> dict[str, Any]:
        # Rajamanoharan et al. 2024 (arXiv 2404.16014): Adam betas (0, 0.999). Their lr 3e-4 is for billions of
        # tokens; penalty_lr was measured on the toy (MMCS 0.97 against 0.68 at Gao's rule; docs/architectures.md).
        return dict(
            lr=penalty_lr(d_sae),
            betas=(0.0, 0.999),
            eps=1e-8,
            lr_schedule="constant",
            lr_warmup_steps=capped(1_000, total_steps, 0.05),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=capped(1_000, total_steps, 0.05),
            grad_clip_norm=0.0,
        )

    @property
    def aux_coefficient(self) -> float:
        return 1.0 if self.cfg.aux_coefficient is None else self.cfg.aux_coefficient

    def _gate(self, x: Tensor) -> Tensor:
        """pi_gate [..., d_sae]; b_dec folded into the bias (see TrainingSAE.pre_acts)."""
        return _affine(x, self.W_enc, self.b_gate - self.b_pre @ self.W_enc)

    def _mag(self, x: Tensor) -> Tensor:
        """pi_mag [..., d_sae]; b_dec folded into the bias."""
        W_mag = self.W_enc * self.r_mag.exp()
        return _affine(x, W_mag, self.b_mag - self.b_pre @ W_mag)

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag) [..., d_sae]."""
        return self._gate(x), self._mag(x)

    def firing_pre(self, x: Tensor) -> tuple[Tensor, Tensor, float]:
        return self._gate(x), self.b_gate, 0.0

    @torch.no_grad()
    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        W_enc = self.W_enc.double()
        shift = self.b_pre.double() @ W_enc
        r_mag = self.r_mag.double()
        return {
            "W_enc": s.x[:, None] * W_enc,
            "b_gate": self.b_gate.double() - shift,
            "b_mag": self.b_mag.double() - shift * r_mag.exp(),
            "r_mag": r_mag,
            "W_dec": self.W_dec.double() / s.y,
            "b_dec": self.b_dec.double() / s.y,
        }

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:
        y = inp.y
        pi_gate = self._gate(inp.x)
        open_ = pi_gate.detach() > 0  # every loss term is zero, with zero gradient, where the gate is shut
        if self._sparse_enough(open_):
            return self._sparse_forward(inp, inp.x - self.b_pre, pi_gate.detach(), open_)
        pi_mag = self._mag(inp.x)
        gate_acts = pi_gate.relu()
        z = (pi_gate > 0) * pi_mag.relu()
        x_hat = self.decode(z)
        mse = (x_hat - y).pow(2).sum(-1).mean()
        l1 = (gate_acts * self.decoder_norms()).sum(-1).mean()
        x_gate = gate_acts @ self.W_dec.detach() + self.b_dec.detach()
        aux = (x_gate - y).pow(2).sum(-1).mean()
        losses = {"mse": mse, "l1": self._lambda(inp) * l1, "aux": self.aux_coefficient * aux}
        return self._output(inp, x_hat, z, losses)

    def _sparse_forward(
        self, inp: TrainStepInput, xc: Tensor, pi_gate: Tensor, open_: Tensor
    ) -> TrainStepOutput:
        """The dense path's loss and gradients from the open gates' pairs only: one encoder GEMM (the gate's;
        pi_mag = exp(r_mag) (pi_gate - b_gate) + b_mag at the pairs) and sparse decodes."""
        n_tokens = pi_gate.shape[0]
        tokens, latents = open_.nonzero(as_tuple=True)  # token-major
        pairs = kernels.Pairs.of_tokens(latents, tokens, n_tokens)
        b_gate = self.b_gate - self.b_pre @ self.W_enc.detach()  # b_dec's gradient through the bias
        gate = kernels.gather_preacts(xc.detach(), self.W_enc, b_gate, pi_gate, pairs)  # > 0: ReLU passes
        mag = self.r_mag.exp()[latents] * (gate - self.b_gate[latents]) + self.b_mag[latents]
        z = mag.relu()
        x_hat = self._decode_sparse(pairs, z) + self.b_dec
        mse = (x_hat - inp.y).pow(2).sum(-1).mean()
        l1 = (gate * self.decoder_norms()[latents]).sum() / n_tokens
        x_gate = kernels.sparse_decode(pairs, gate, self.W_dec.detach()) + self.b_dec.detach()
        aux = (x_gate - inp.y).pow(2).sum(-1).mean()
        losses = {"mse": mse, "l1": self._lambda(inp) * l1, "aux": self.aux_coefficient * aux}
        fired = torch.bincount(latents[z.detach() > 0], minlength=self.d_sae).to(inp.x.dtype)
        return self._output_fired(inp, x_hat, fired, losses)


register_architecture(training=GatedTrainingSAE, inference=GatedSAE)
