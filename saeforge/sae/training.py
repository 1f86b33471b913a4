"""What every training SAE shares (initialisation, b_dec from data, decoder-norm hooks, the sparse path's helpers,
export) and the TopK family's recipe; the penalty family is `saeforge.sae.penalty`.

Training SAEs work in the trainer's scaled space (x_s = s * x) and always subtract the pre-encoder bias b_dec:

    pre = (x_s - b_dec) @ W_enc + b_enc

`export(s)` returns an inference SAE on raw activations with the scale and the pre-encoder bias folded into the
weights (apply_b_dec_to_input=False):

    W_enc' = s W_enc    b_enc' = b_enc - b_dec @ W_enc    W_dec' = W_dec / s    b_dec' = b_dec / s

so that export(s).encode(x) == encode(s x) and export(s).decode(z) == decode(z) / s. Thresholds are in
pre-activation units and do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from saeforge.sae import kernels, registry, screen
from saeforge.sae.base import SAE, SAEConfig, TrainStepInput, TrainStepOutput
from saeforge.sae.rates import capped, topk_lr
from saeforge.sparsity import setting

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig

DEFAULT_K = 32


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


@dataclass(frozen=True)
class Scales:
    """The training space's activation scales, float64, one per dimension: x_s = x * s.x [d_x], y_s = y * s.y."""

    x: Tensor
    y: Tensor

    @staticmethod
    def of(sae: SAE, x: float | Tensor, y: float | Tensor) -> Scales:
        out = []
        for value, width, what in ((x, sae.d_x, "activation_scale"), (y, sae.d_y, "target_scale")):
            t = torch.as_tensor(value, dtype=torch.float64, device=sae.W_dec.device)
            if t.numel() not in (1, width) or not (torch.isfinite(t).all() and (t > 0).all()):
                raise ValueError(f"{what} must be positive finite numbers (one, or {width}), got {value}")
            out.append(t.reshape(-1).expand(width))
        return Scales(*out)


class TrainingSAE(SAE):
    """Base of the training architectures: an inference SAE (`SAE`) that also trains.

    A subclass lists its inference class first among its bases (so `encode` is written once, for both) and sets:
    `architecture` (registered name), `inference_architecture` (what `export` writes), `description` (the run
    card's sparsity mechanism), `sparsity_settings` (the config fields that set its sparsity, for the run card),
    `config_fields` (a pydantic model of the config fields only it reads, or None), `check_config` (checks and
    defaults of those fields) and `optim_defaults` (its paper's optimiser settings). It implements
    `training_forward` and `_inference_state` (what `export` writes).
    """

    architecture: ClassVar[str]
    inference_architecture: ClassVar[str]
    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sparsity_settings: ClassVar[tuple[str, ...]] = ()
    config_fields: ClassVar[type[BaseModel] | None] = None
    unit_norm_decoder: ClassVar[bool] = False
    # The architecture's dead criterion in batches, when it has a measured one: a latent that has not fired in
    # this many batches is dead (AuxK trains it). None: the run's `dead_tokens` default. A run's own
    # `dead_tokens` overrides both; the run's default caps it.
    dead_batches: ClassVar[int | None] = None
    # A latent that fired on fewer than this fraction of the tokens a latent fires on at the design rate (k / d_sae
    # for the TopK family) over the dead window is dead too (train/dead.py). None: no such rule.
    rare_fraction: ClassVar[float | None] = None
    cfg: TrainingSAEConfig

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.seed)
        row_norm = 1.0 if self.unit_norm_decoder else cfg.decoder_init_norm
        W_dec = torch.randn(cfg.d_sae, self.d_y, generator=g)
        W_dec *= row_norm / W_dec.norm(dim=1, keepdim=True)
        W_enc_T = W_dec
        if self.d_x != self.d_y:  # reads one site, writes another: no tied initialisation
            W_enc_T = torch.randn(cfg.d_sae, self.d_x, generator=g)
            W_enc_T *= row_norm / W_enc_T.norm(dim=1, keepdim=True)
        # Replacing a parameter keeps its place in the module (state_dict and optimiser order). W_enc is a
        # transpose's clone and so column-major: the sparse kernels gather its columns.
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_enc_T.T.clone())

    @property
    def b_pre(self) -> Tensor:
        """The pre-encoder bias subtracted from x: b_dec for an SAE (input and output are one site)."""
        return self.b_dec

    def decoder_norms(self) -> Tensor:
        """[d_sae] the decoder-norm weight of each latent in norm-weighted penalties: ||W_dec[i]||."""
        return self.W_dec.norm(dim=1)

    # The sparse path (saeforge/sae/kernels.py): pre-activations without a dense gradient, then differentiable
    # values and a decode at the selected (token, latent) pairs only.

    @torch.no_grad()
    def _pre_no_grad(self, xc: Tensor) -> Tensor:
        """xc [B, d_in] (x - b_dec) -> [B, d_sae] pre-activations without autograd history."""
        return torch.addmm(self.b_enc, xc, self.W_enc)

    def _gather(self, xc: Tensor, pre: Tensor, pairs: kernels.Pairs, selected: bool = False) -> Tensor:
        """[n] differentiable pre-activations at the selected pairs (pre [B, d_sae], or with `selected` the
        selected values [n] themselves).

        b_dec's gradient through xc = x - b_dec is -sum_b d/dxc[b] = -W_enc @ (b_enc's gradient): it is routed
        through the bias (one matvec) rather than through a per-token gradient of xc, which costs a sparse
        product as large as the encoder's weight gradient.
        """
        b_enc = self.b_enc - self.b_pre @ self.W_enc.detach()
        gather = kernels.selected_preacts if selected else kernels.gather_preacts
        return gather(xc.detach(), self.W_enc, b_enc, pre, pairs)

    def _decode_sparse(self, pairs: kernels.Pairs, vals: Tensor) -> Tensor:
        """pairs over B tokens, vals [n] -> [B, d_in] (without b_dec)."""
        return kernels.sparse_decode(pairs, vals, self.W_dec)

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        """Checks the architecture's fields of a validated config and fills their defaults (in place)."""

    @classmethod
    def tokens_needed(cls, cfg: TrainingSAEConfig) -> tuple[int, str] | None:
        """(tokens, fix) when this configuration needs more training tokens by nature than short runs give:
        the documented measurement (docs/architectures.md) and what to change; None when it does not."""
        return None

    @classmethod
    def known_shortfall(cls, cfg: TrainingSAEConfig) -> str | None:
        """What this configuration is documented not to reach at any measured budget (docs/architectures.md),
        said at the start of every run that trains it; None when nothing is known."""
        return None

    @staticmethod
    def optim_defaults(d_sae: int, total_steps: int) -> dict[str, Any]:
        """Optimiser settings of an architecture without a paper recipe."""
        return dict(
            lr=3e-4,
            betas=(0.9, 0.999),
            eps=1e-8,
            lr_schedule="constant",
            lr_warmup_steps=capped(1_000, total_steps, 0.05),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=0,
            grad_clip_norm=0.0,
        )

    @torch.no_grad()
    def init_from_data(self, x_sample: Tensor, target_sample: Tensor | None = None) -> None:
        """Sets b_dec from a sample of (scaled) targets [N, d_out] (default: the inputs x_sample [N, d_in]), as
        `cfg.b_dec_init` says."""
        y, what = (x_sample, "x_sample") if target_sample is None else (target_sample, "target_sample")
        if y.ndim != 2 or y.shape[1] != self.d_y:
            width = "d_in" if target_sample is None else "d_out"
            raise ValueError(f"{what} must be [N, {width}={self.d_y}], got {list(y.shape)}")
        self.b_dec.copy_(self._centre(y))

    @torch.no_grad()
    def _centre(self, sample: Tensor) -> Tensor:
        """The initial bias for data `sample` [N, d] as `cfg.b_dec_init` says."""
        x = sample.to(self.b_dec.dtype)
        if self.cfg.b_dec_init == "geometric_median":
            return geometric_median(x)
        if self.cfg.b_dec_init == "mean":
            return x.mean(0)
        return torch.zeros_like(x[0])

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
        return _affine(x, self.W_enc, self.b_enc - self.b_pre @ self.W_enc)

    def training_forward(self, inp: TrainStepInput) -> TrainStepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def _folded(self, s: Scales) -> dict[str, Tensor]:
        """W_enc, b_enc, W_dec, b_dec of the inference SAE on raw activations (see module docstring)."""
        W_enc, b_enc, W_dec, b_dec = (p.double() for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))
        b_pre = self.b_pre.double()
        return {
            "W_enc": s.x[:, None] * W_enc,
            "b_enc": b_enc - b_pre @ W_enc,
            "W_dec": W_dec / s.y,
            "b_dec": b_dec / s.y,
        }

    def _inference_state(self, s: Scales) -> dict[str, Tensor]:
        return self._folded(s)

    def _inference_config(self) -> dict[str, Any]:
        """SAEConfig fields of the exported SAE beyond architecture, d_in, d_sae."""
        return {}

    @property
    def exported_architecture(self) -> str:
        """The registered inference architecture `export` writes."""
        return self.inference_architecture

    @torch.no_grad()
    def export(
        self, activation_scale: float | Tensor = 1.0, target_scale: float | Tensor | None = None
    ) -> SAE:
        """Inference SAE on raw activations, float32, on this SAE's device.

        activation_scale: the trainer's x_scaled = activation_scale * x, a number or one per input dimension
            [d_in] (a crosscoder's per-site scales). target_scale: the same for the target (default: as x).
        """
        s = Scales.of(self, activation_scale, activation_scale if target_scale is None else target_scale)
        cfg = SAEConfig(
            architecture=self.exported_architecture,
            d_in=self.d_in,
            d_sae=self.d_sae,
            apply_b_dec_to_input=False,
            **self._inference_config(),
        )
        sae = registry.inference_class(self.exported_architecture)(cfg)
        state = {k: v.to(torch.float32) for k, v in self._inference_state(s).items()}
        sae.load_state_dict(state)
        return sae.to(self.W_dec.device)


class TopKFields(BaseModel):
    """Config fields of the TopK family."""

    k_aux: int | None = setting("k_aux")
    screen: Literal["auto", "off", "bf16"] = Field(
        default="auto",
        description=(
            "topk/batchtopk/matryoshka: select through the certified bf16 screen, which finds the exact "
            "(real-arithmetic) top k from a bf16 GEMM (docs/benchmarks.md); auto: on a CPU with native bf16, "
            "in an fp32 step, while at most half the latents are dead; off: the dense fp32 GEMM"
        ),
    )


def _native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here (a CPU whose oneDNN has avx512_bf16 or AMX)."""
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class TopKFamilySAE(TrainingSAE):
    """TopK, BatchTopK and Matryoshka share Gao et al.'s recipe: unit-norm decoder rows, W_enc = W_dec.T at init,
    b_dec from data, AuxK on dead latents, and the sparse kernels (no dense [B, d_sae] gradient, no dense decode)."""

    family = "topk"
    config_fields = TopKFields
    sparsity_settings = ("k", "k_aux", "aux_coefficient")
    unit_norm_decoder = True
    # Bussmann et al.'s BatchTopK code counts a latent dead after 5 batches without firing. Measured here
    # (docs/architectures.md): BatchTopK's dead latents on the k-16 toy 3.5% -> 0.0%, its toy MMCS at k 32 (with
    # topk_lr) 0.826 -> 0.895; TopK's MiniLM dead fraction 3.3% -> 2.2% at an unchanged FVU.
    dead_batches = 5
    # A latent firing on under 1/64 of the k / d_sae rate over its 5 batches is dead too (train/dead.py): junk
    # latents near the selection level, firing on ~1 token in 4096, otherwise never train through AuxK. Measured
    # on the k-16 toy, seeds 0-4 (docs/architectures.md): held-out MMCS up on every seed for TopK (0.984 -> 0.988
    # mean), on four of five for BatchTopK (0.985 -> 0.988, one equal), no held-out dead latent in either; no
    # change where k * 5B / (64 d_sae) <= 1.
    rare_fraction = 1 / 64

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        k_note = ""
        if cfg.k is None:
            cfg.k, k_note = DEFAULT_K, " (the default)"
        if cfg.k > cfg.d_sae:
            raise ValueError(f"k={cfg.k}{k_note} is larger than d_sae={cfg.d_sae}; choose k <= d_sae")
        if cfg.k_aux is not None and cfg.k_aux > cfg.d_sae:
            raise ValueError(f"k_aux={cfg.k_aux} is larger than d_sae={cfg.d_sae}; choose k_aux <= d_sae")
        if cfg.sparsity_coefficient is not None or cfg.target_l0 is not None:
            raise ValueError(
                f"{cfg.architecture} sets its sparsity with k; sparsity_coefficient/target_l0 do not apply"
            )

    @staticmethod
    def optim_defaults(d_sae: int, total_steps: int) -> dict[str, Any]:
        # Gao et al. 2024 (arXiv 2406.04093): Adam eps 6.25e-10, constant lr after a short warm-up; their lr
        # rule times ten for short runs (topk_lr, measured for TopK, BatchTopK and Matryoshka).
        return dict(
            lr=topk_lr(d_sae),
            betas=(0.9, 0.999),
            eps=6.25e-10,
            lr_schedule="constant",
            lr_warmup_steps=capped(100, total_steps, 0.01),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=0,
            grad_clip_norm=1.0,
        )

    def _extras(self) -> dict[str, Tensor]:
        """For the trainer's logs (none by default)."""
        return {}

    def _output(
        self, x: Tensor, x_hat: Tensor, pairs: kernels.Pairs, vals: Tensor, losses: dict[str, Tensor]
    ) -> TrainStepOutput:
        """The step's output from x [B, d_in], the reconstruction and the selected pairs with their values [n]:
        fired counts each latent's pairs that `_fires` (the dead criterion's), L0 is the number with vals > 0 over B."""
        with torch.no_grad():
            fired = torch.bincount(pairs.latents[self._fires(vals)], minlength=self.d_sae).to(vals.dtype)
            l0 = (vals > 0).sum().to(vals.dtype) / x.shape[0]
        return TrainStepOutput(x_hat, sum(losses.values()), losses, fired, l0, self._extras())

    def _fires(self, vals: Tensor) -> Tensor:
        """Which selected values [n] count as the latent firing (for the dead criterion): the nonzero ones."""
        return vals > 0

    @property
    def k_aux(self) -> int:
        return self.cfg.k_aux or max(1, min(self.d_x // 2, self.d_sae))

    @property
    def aux_coefficient(self) -> float:
        return 1.0 / 32 if self.cfg.aux_coefficient is None else self.cfg.aux_coefficient

    @property
    def _screened_k(self) -> int:
        """How many largest pre-activations per row the screen finds (BatchTopK: the 2k each row offers)."""
        return self.cfg.k

    def _screens(self, dead_mask: Tensor | None) -> bool:
        """Whether this step selects through the bf16 screen (`screen`): `bf16` always, `auto` in an fp32 step
        on a CPU with native bf16, neither while more than half the latents are dead (their columns, which AuxK
        then reads alone, would cost more than the dense GEMM); a screened step passes pre=None to `_auxk`."""
        mode, W = self.cfg.screen, self.W_enc
        if mode == "off" or (dead_mask is not None and 2 * int(dead_mask.sum()) > self.d_sae):
            return False
        if not screen.worth_screening(self._screened_k, W.shape[1]):
            return False  # the screen would compute the dense product anyway
        return mode == "bf16" or (
            W.dtype == torch.float32
            and not torch.is_autocast_enabled(W.device.type)
            and _native_bf16(W.device)
        )

    def _pairs(self, idx: Tensor) -> kernels.Pairs:
        """A per-token selection idx [B, w] (TopK, AuxK) as pairs: w for every token."""
        return kernels.Pairs.padded(idx)

    def _topk(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(values, indices) [B, k] of each token's k largest pre-activations (pre [B, d_sae])."""
        return kernels.topk_select(pre, k)

    @torch.no_grad()
    def _dead_topk(self, pre: Tensor, dead_mask: Tensor | None) -> Tensor | None:
        """[B, min(k_aux, dead)] indices of each token's largest pre-activations among dead latents (dead_mask
        [d_sae] bool); None when no latent is dead."""
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return None
        dead = dead_mask.to(pre.device).nonzero().squeeze(1)
        return dead[kernels.topk_select(pre.index_select(1, dead), min(self.k_aux, n_dead))[1]]

    @torch.no_grad()
    def _dead_topk_direct(self, xc: Tensor, dead_mask: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """(values, indices) [B, min(k_aux, dead)] of each token's largest pre-activations among dead latents,
        from their columns of W_enc alone (no dense pre-activations); None when no latent is dead."""
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return None
        dead = dead_mask.to(xc.device).nonzero().squeeze(1)
        W, b = self.W_enc.detach()[:, dead], self.b_enc.detach()[dead]
        values, j = screen.real_topk(xc.detach(), W, b, min(self.k_aux, n_dead))
        return values, dead[j]

    def _auxk(self, xc: Tensor, pre: Tensor, residual: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK (Gao et al. 2024, A.2): the top-k_aux dead latents reconstruct the detached residual x - x_hat.

        Returns aux_coefficient * mean_b ||residual - sum_j z_aux W_dec[idx_aux]||^2 (0 when nothing is dead).
        """
        if pre is None:  # a screened step: only the dead latents' columns, exactly
            top = self._dead_topk_direct(xc, dead_mask)
            if top is None:
                return residual.new_zeros(())
            pairs = self._pairs(top[1])
            vals = self._gather(xc, top[0].reshape(-1), pairs, selected=True).relu()
        else:
            idx = self._dead_topk(pre, dead_mask)
            if idx is None:
                return residual.new_zeros(())
            pairs = self._pairs(idx)
            vals = self._gather(xc, pre, pairs).relu()
        e_hat = self._decode_sparse(pairs, vals)
        return self.aux_coefficient * (residual - e_hat).pow(2).sum(-1).mean()
