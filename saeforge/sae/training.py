"""What every training SAE shares: initialisation, b_dec from data, decoder-norm hooks, penalty controller, export.

Training SAEs work in the trainer's scaled space (x_s = s * x) and always subtract the pre-encoder bias b_dec:

    pre = (x_s - b_dec) @ W_enc + b_enc

`export(s)` returns an inference SAE on raw activations with the scale and the pre-encoder bias folded into the
weights (apply_b_dec_to_input=False):

    W_enc' = s W_enc    b_enc' = b_enc - b_dec @ W_enc    W_dec' = W_dec / s    b_dec' = b_dec / s

so that export(s).encode(x) == encode(s x) and export(s).decode(z) == decode(z) / s. Thresholds are in
pre-activation units and do not change.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from saeforge.sae import kernels
from saeforge.sae.base import SAE, SAEConfig, TrainStepInput, TrainStepOutput
from saeforge.sae.config import TrainingSAEConfig


@torch.no_grad()
def geometric_median(x: Tensor, max_iter: int = 200, tol: float = 1e-7) -> Tensor:
    """Weiszfeld's algorithm: argmin_m sum_i ||x_i - m||. x [N, d] -> [d] (computed in float64)."""
    x64 = x.double()
    m = x64.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (x64 - m).norm(dim=1).clamp_min(1e-12)
        m_new = (w[:, None] * x64).sum(0) / w.sum()
        moved = (m_new - m).norm()
        m = m_new
        if moved <= tol * (1.0 + m.norm()):
            break
    return m.to(x.dtype)


def _affine(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x [..., d_in] @ W [d_in, d] + b [d] -> [..., d] in one addmm."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1])


class TrainingSAE(nn.Module):
    """Base of the training architectures. Subclasses set `architecture` and implement `training_forward`,
    `encode` and `_inference_state` (what `export` writes)."""

    architecture: ClassVar[str]
    inference_architecture: ClassVar[str]
    unit_norm_decoder: ClassVar[bool] = False

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        row_norm = 1.0 if self.unit_norm_decoder else cfg.decoder_init_norm
        W_dec *= row_norm / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def init_from_data(self, x_sample: Tensor) -> None:
        """Sets b_dec from a sample x_sample [N, d_in] of (scaled) activations, as `cfg.b_dec_init` says."""
        if x_sample.ndim != 2 or x_sample.shape[1] != self.d_in:
            raise ValueError(f"x_sample must be [N, d_in={self.d_in}], got {list(x_sample.shape)}")
        x = x_sample.to(self.b_dec)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x.mean(0))
        else:
            self.b_dec.zero_()

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Unit-norm decoders: removes the component of W_dec's gradient parallel to each row (in place)."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            W, G = self.W_dec, self.W_dec.grad
            coef = torch.linalg.vecdot(G, W, dim=1).div_(torch.linalg.vector_norm(W, dim=1).square_())
            G.addcmul_(W, coef.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Unit-norm decoders: renormalises W_dec's rows."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    def pre_acts(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae] encoder pre-activations (dense, differentiable).

        Computed as x @ W_enc + (b_enc - b_dec @ W_enc), the same value as (x - b_dec) @ W_enc + b_enc: with x
        data, b_dec's gradient is then a matvec instead of a [B, d_sae] x [d_sae, d_in] matmul.
        """
        return _affine(x, self.W_enc, self.b_enc - self.b_dec @ self.W_enc)

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """[..., d_in] (scaled space) -> [..., d_sae], the per-token rule an exported SAE uses."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """[..., d_sae] -> [..., d_in] (scaled space)."""
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def _folded(self, s: float) -> dict[str, Tensor]:
        """W_enc, b_enc, W_dec, b_dec of the inference SAE on raw activations (see module docstring)."""
        W_enc, b_enc, W_dec, b_dec = (p.double() for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))
        return {"W_enc": s * W_enc, "b_enc": b_enc - b_dec @ W_enc, "W_dec": W_dec / s, "b_dec": b_dec / s}

    def _inference_state(self, s: float) -> dict[str, Tensor]:
        return self._folded(s)

    def _inference_config(self) -> dict:
        return {}

    @torch.no_grad()
    def export(self, activation_scale: float = 1.0) -> SAE:
        """Inference SAE on raw activations (x_scaled = activation_scale * x), float32, on this SAE's device."""
        from saeforge.sae.registry import INFERENCE_ARCHITECTURES

        if not (activation_scale > 0 and math.isfinite(activation_scale)):
            raise ValueError(f"activation_scale must be a positive finite number, got {activation_scale}")
        cfg = SAEConfig(
            architecture=self.inference_architecture,
            d_in=self.d_in,
            d_sae=self.d_sae,
            apply_b_dec_to_input=False,
            **self._inference_config(),
        )
        sae = INFERENCE_ARCHITECTURES[self.inference_architecture](cfg)
        state = {k: v.to(torch.float32) for k, v in self._inference_state(float(activation_scale)).items()}
        sae.load_state_dict(state)
        return sae.to(self.W_dec.device)

    @staticmethod
    def _fired(idx: Tensor, vals: Tensor, d_sae: int) -> Tensor:
        """Per-latent count of tokens with vals > 0; idx, vals [B, w] -> [d_sae] float."""
        active = vals.detach() > 0
        return torch.bincount(idx[active], minlength=d_sae).to(vals.dtype)


class PenaltySAE(TrainingSAE):
    """Architectures with a sparsity penalty: lambda fixed (`sparsity_coefficient`) or adapted to `target_l0`.

    The controller keeps lambda in the buffer `sparsity_coefficient`. After the warm-up (sparsity_warmup == 1) it
    multiplies lambda by ((l0 + 1) / (target_l0 + 1)) ** l0_controller_rate after each training step, l0 being
    the batch L0 averaged over data-parallel ranks; during warm-up the trainer's linear ramp alone acts.
    """

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        if cfg.sparsity_coefficient is not None:
            lam = cfg.sparsity_coefficient
        else:
            lam = cfg.initial_sparsity_coefficient or self.default_initial_coefficient(cfg)
        self.register_buffer("sparsity_coefficient", torch.tensor(float(lam)))

    @staticmethod
    def default_initial_coefficient(cfg: TrainingSAEConfig) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _lambda(self, inp: TrainStepInput) -> Tensor:
        """The penalty weight for this step (no grad)."""
        return self.sparsity_coefficient * float(inp.sparsity_warmup)

    def _extras(self) -> dict[str, Tensor]:
        """For the trainer's logs: the current lambda (before warm-up)."""
        return {"sparsity_coefficient": self.sparsity_coefficient.detach().clone()}

    def _output(
        self, inp: TrainStepInput, x_hat: Tensor, z: Tensor, losses: dict[str, Tensor]
    ) -> TrainStepOutput:
        """The step's output from the reconstruction, latents z [B, d_sae] and loss terms; adapts lambda."""
        with torch.no_grad():
            active = z > 0
            l0 = active.sum(-1).float().mean()
            fired = active.sum(0).to(inp.x.dtype)
        self._adapt(inp, l0)
        return TrainStepOutput(x_hat, sum(losses.values()), losses, fired, l0, self._extras())

    @torch.no_grad()
    def _adapt(self, inp: TrainStepInput, l0: Tensor) -> None:
        if self.cfg.target_l0 is None or inp.sparsity_warmup < 1.0 or not self.training:
            return
        l0_mean = inp.collectives.all_reduce_sum(l0.detach().clone()) / inp.collectives.world_size
        ratio = (l0_mean + 1.0) / (self.cfg.target_l0 + 1.0)
        self.sparsity_coefficient.mul_(ratio.pow(self.cfg.l0_controller_rate))


class TopKFamilySAE(TrainingSAE):
    """TopK, BatchTopK and Matryoshka share Gao et al.'s recipe: unit-norm decoder rows, W_enc = W_dec.T at init,
    b_dec from data, AuxK on dead latents, and the sparse kernels (no dense [B, d_sae] gradient, no dense decode)."""

    unit_norm_decoder = True

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or max(1, min(self.d_in // 2, self.d_sae))

    @property
    def aux_coefficient(self) -> float:
        return 1.0 / 32 if self.cfg.aux_coefficient is None else self.cfg.aux_coefficient

    @torch.no_grad()
    def _pre_no_grad(self, xc: Tensor) -> Tensor:
        """xc [B, d_in] (x - b_dec) -> [B, d_sae] pre-activations without autograd history."""
        return torch.addmm(self.b_enc, xc, self.W_enc)

    def _gather(self, xc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        """[B, w] differentiable pre-activations of the selected latents.

        b_dec's gradient through xc = x - b_dec is -sum_b d/dxc[b] = -W_enc @ (b_enc's gradient): it is routed
        through the bias (one matvec) rather than through a per-token gradient of xc, which costs a sparse
        product as large as the encoder's weight gradient.
        """
        b_enc = self.b_enc - self.b_dec @ self.W_enc.detach()
        return kernels.gather_preacts(xc.detach(), self.W_enc, b_enc, pre, idx)

    def _decode_sparse(self, idx: Tensor, vals: Tensor) -> Tensor:
        """idx, vals [B, w] -> [B, d_in] (without b_dec)."""
        return kernels.sparse_decode(idx, vals, self.W_dec)

    def _auxk(self, xc: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK (Gao et al. 2024, A.2): the top-k_aux dead latents reconstruct the detached residual x - x_hat.

        Returns aux_coefficient * mean_b ||residual - sum_j z_aux W_dec[idx_aux]||^2 (0 when nothing is dead).
        """
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return residual.new_zeros(())
        k_aux = min(self.k_aux, n_dead)
        with torch.no_grad():
            dead = dead_mask.to(pre.device).nonzero().squeeze(1)
            idx = dead[kernels.topk_select(pre.index_select(1, dead), k_aux)[1]]
        vals = self._gather(xc, pre, idx).relu()
        e_hat = self._decode_sparse(idx, vals)
        return self.aux_coefficient * (residual - e_hat).pow(2).sum(-1).mean()
