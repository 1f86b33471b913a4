"""The penalty family: architectures whose sparsity is a loss term weighted by lambda (standard, JumpReLU, Gated).

lambda is fixed (`sparsity_coefficient`) or adapted to `target_l0` by a PI controller (`PenaltySAE`); each
latent's encoder bias can start at the target firing rate (`init_firing_rate`); and while few (token, latent)
pairs are needed the architectures take a sparse step (`sparse_max_density`, `_sparse_enough`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from saeforge.sae.base import TrainStepInput, TrainStepOutput
from saeforge.sae.training import DEFAULT_K, TrainingSAE
from saeforge.sparsity import setting

if TYPE_CHECKING:
    from saeforge.sae.config import TrainingSAEConfig


class PenaltyFields(BaseModel):
    """Config fields of the penalty architectures."""

    sparsity_coefficient: float | None = setting("sparsity_coefficient")
    target_l0: float | None = setting("target_l0")
    l0_controller_rate: float = Field(
        default=0.02, gt=0, description="target_l0: per-step log-step of lambda per unit log(L0 / target)"
    )
    l0_controller_gain: float | None = Field(
        default=None,
        ge=0,
        description="target_l0: proportional gain, log-step of lambda per unit change of log(L0 / target) "
        "(damps the controller's oscillation); 0: integral only. Default: gated, jumprelu 1; standard 0",
    )
    initial_sparsity_coefficient: float | None = Field(
        default=None, gt=0, description="target_l0: starting lambda (architecture default if None)"
    )
    init_firing_rate: bool = Field(
        default=True,
        description="target_l0: shift each latent's encoder bias at init so that it fires on target_l0 / d_sae "
        "of the first batch's tokens (L0 starts at the target)",
    )


class PenaltySAE(TrainingSAE):
    """Architectures with a sparsity penalty: lambda fixed (`sparsity_coefficient`) or adapted to `target_l0`.

    The controller keeps lambda in the buffer `sparsity_coefficient`. After the warm-up (sparsity_warmup == 1) it
    updates log lambda after each training step as a PI controller in velocity form, with the error
    e_t = log((l0 + 1) / (target_l0 + 1)), l0 being the batch L0 averaged over data-parallel ranks:

        log lambda += l0_controller_rate * e_t + l0_controller_gain * (e_t - e_{t-1})

    (e_{t-1} in the buffer `l0_error`). The integral term alone oscillates: L0 answers lambda only after Adam has
    moved the weights, so lambda overshoots; the proportional term damps it. During warm-up the trainer's
    linear ramp alone acts. With neither lambda nor target_l0 given, target_l0 = k (default min(32, d_sae // 2)).
    """

    family = "penalty"
    config_fields = PenaltyFields
    default_controller_gain: ClassVar[float] = 1.0
    # The sparse step (pairs only, no dense [B, d_sae] gradient or decode) is taken while at most this fraction
    # of the (token, latent) pairs is needed; above it the dense GEMMs win. ReLU+L1, dense over sparse: 3.25x at
    # 0.26% active, 1.37x at 6.25%, 0.96x at 12.5% (bench/penalty_sparse_bench.py; docs/benchmarks.md).
    sparse_max_density: ClassVar[float] = 1 / 16
    sparsity_settings = (
        "sparsity_coefficient",
        "target_l0",
        "l0_controller_rate",
        "l0_controller_gain",
        "initial_sparsity_coefficient",
        "init_firing_rate",
    )

    @classmethod
    def check_config(cls, cfg: TrainingSAEConfig) -> None:
        if cfg.sparsity_coefficient is not None and cfg.target_l0 is not None:
            raise ValueError("give either sparsity_coefficient or target_l0, not both")
        if cfg.target_l0 is not None and cfg.target_l0 > cfg.d_sae:
            raise ValueError(f"target_l0={cfg.target_l0} is larger than d_sae={cfg.d_sae}")
        if cfg.sparsity_coefficient is None and cfg.target_l0 is None:
            cfg.target_l0 = float(cfg.k or min(DEFAULT_K, max(1, cfg.d_sae // 2)))
        if cfg.l0_controller_gain is None:
            cfg.l0_controller_gain = cls.default_controller_gain

    def __init__(self, cfg: TrainingSAEConfig):
        super().__init__(cfg)
        if cfg.sparsity_coefficient is not None:
            lam = cfg.sparsity_coefficient
        else:
            lam = cfg.initial_sparsity_coefficient or self.default_initial_coefficient(cfg)
        self.register_buffer("sparsity_coefficient", torch.tensor(float(lam)))
        self.register_buffer("l0_error", torch.tensor(0.0))  # the controller's last log(L0 / target)

    @staticmethod
    def default_initial_coefficient(cfg: TrainingSAEConfig) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sparse_enough(self, needed: Tensor) -> bool:
        """Whether the step should take the sparse path, needed [B, d_sae] bool the pairs it would touch."""
        # count_nonzero: a bool sum() widens to an int64 copy (~1 s and 0.8 GB at B 4096, d_sae 24576)
        return int(torch.count_nonzero(needed)) <= self.sparse_max_density * needed.numel()

    def firing_pre(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | float]:
        """(pre [N, d_sae], bias [d_sae], point): latent i fires where pre[:, i] > point; bias shifts pre."""
        return self.pre_acts(x), self.b_enc, 0.0

    @torch.no_grad()
    def init_from_data(self, x_sample: Tensor, target_sample: Tensor | None = None) -> None:
        """b_dec as every SAE; then, with target_l0 and `init_firing_rate`, adds to each latent's encoder bias
        point - q_i, q_i the (1 - target_l0 / d_sae) quantile of its pre-activations on x_sample [N, d_in]: each
        latent fires on target_l0 / d_sae of the sample, so L0 starts at the target instead of ~d_sae / 2, which
        neither the penalty nor the controller could undo in a short run (Adam moves a bias ~lr per step)."""
        super().init_from_data(x_sample, target_sample)
        if self.cfg.target_l0 is None or not self.cfg.init_firing_rate:
            return
        sample = x_sample[:8192].to(self.b_dec.dtype)
        n = sample.shape[0]
        keep = min(max(1, round(n * self.cfg.target_l0 / self.d_sae)), n)
        # q: between the keep-th and next largest; the top keep + 1 of each block of rows, then of those (no
        # dense [n, d_sae] held: at d_sae 24576 it was the run's peak memory)
        tops = []
        for block in sample.split(1024):
            pre, bias, point = self.firing_pre(block)
            tops.append(pre.topk(min(keep + 1, pre.shape[0]), dim=0).values)
        top = torch.cat(tops).topk(min(keep + 1, n), dim=0).values
        q = (top[keep - 1] + top[keep]) / 2 if keep < n else top[-1] - 1e-3
        bias.add_(point - q)

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
            fired = (z > 0).sum(0, dtype=inp.x.dtype)  # an int64 sum of the [B, d_sae] bool costs 4x
        return self._output_fired(inp, x_hat, fired, losses)

    def _output_fired(
        self, inp: TrainStepInput, x_hat: Tensor, fired: Tensor, losses: dict[str, Tensor]
    ) -> TrainStepOutput:
        """As `_output`, from how often each latent fired in the batch (fired [d_sae])."""
        l0 = fired.sum().float() / x_hat.shape[:-1].numel()
        self._adapt(inp, l0)
        return TrainStepOutput(x_hat, sum(losses.values()), losses, fired, l0, self._extras())

    @torch.no_grad()
    def _adapt(self, inp: TrainStepInput, l0: Tensor) -> None:
        if self.cfg.target_l0 is None or inp.sparsity_warmup < 1.0 or not self.training:
            return
        l0_mean = inp.collectives.all_reduce_sum(l0.detach().clone()) / inp.collectives.world_size
        error = ((l0_mean + 1.0) / (self.cfg.target_l0 + 1.0)).log()
        step = self.cfg.l0_controller_rate * error + self.cfg.l0_controller_gain * (error - self.l0_error)
        self.sparsity_coefficient.mul_(step.exp())
        self.l0_error.copy_(error)
