"""`TrainingSAEConfig`: one typed config for every training architecture, validated once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TRAINING_ARCHITECTURE_NAMES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
ARCHITECTURE_ALIASES = {"relu": "standard"}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
PENALTY_FAMILY = ("standard", "jumprelu", "gated")
DEFAULT_K = 32


def canonical_architecture(name: str, valid: tuple[str, ...] = TRAINING_ARCHITECTURE_NAMES) -> str:
    """Resolves aliases ("relu" -> "standard"); an unknown name raises ValueError listing the valid ones."""
    name = ARCHITECTURE_ALIASES.get(name, name)
    if name not in valid:
        aliases = ", ".join(f"{a} (= {t})" for a, t in ARCHITECTURE_ALIASES.items() if t in valid)
        raise ValueError(
            f"unknown SAE architecture {name!r}; valid architectures: {', '.join(valid)}"
            + (f"; aliases: {aliases}" if aliases else "")
        )
    return name


DEFAULT_BANDWIDTH = 0.05


class SparsitySettings(BaseModel):
    """The sparsity settings a run's `SAESpec` passes through to `TrainingSAEConfig`, declared once (None: the
    architecture's default)."""

    k: int | None = Field(
        default=None,
        gt=0,
        description=f"active latents per token (TopK family, default {DEFAULT_K}); default target_l0",
    )
    k_aux: int | None = Field(
        default=None, gt=0, description="AuxK latents per token; default d_in // 2, capped at the dead count"
    )
    sparsity_coefficient: float | None = Field(
        default=None, gt=0, description="fixed penalty weight lambda (standard: L1, jumprelu: L0, gated: L1)"
    )
    target_l0: float | None = Field(
        default=None,
        gt=0,
        description="penalty architectures: adapt lambda during training to reach this L0 (or sparsity_coefficient)",
    )
    bandwidth: float | None = Field(
        default=None,
        gt=0,
        description=f"jumprelu: rectangle-kernel STE bandwidth epsilon, pre-activation units (default {DEFAULT_BANDWIDTH})",
    )
    group_sizes: list[int] | None = Field(
        default=None, description="matryoshka: nested group sizes summing to d_sae (default: doubling groups)"
    )


class TrainingSAEConfig(SparsitySettings):
    """How to build and train one SAE.

    Sparsity is set by `k` for the TopK family (topk, batchtopk, matryoshka) and by `sparsity_coefficient` or
    `target_l0` for the penalty architectures (standard, jumprelu, gated). With neither given, the penalty
    architectures aim at `target_l0 = k` (k defaults to 32, or d_sae // 2 for penalty SAEs narrower than 64), so
    every architecture defaults to the same L0.
    """

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(
        description="standard (alias relu), topk, batchtopk, jumprelu, gated, matryoshka"
    )
    d_in: int = Field(gt=0, description="input width")
    d_sae: int = Field(gt=0, description="number of latents")
    aux_coefficient: float | None = Field(
        default=None,
        ge=0,
        description="AuxK weight (TopK family, default 1/32) or gated's auxiliary reconstruction weight (1)",
    )
    l0_controller_rate: float = Field(
        default=0.02, gt=0, description="target_l0: per-step log-step of lambda per unit log(L0 / target)"
    )
    initial_sparsity_coefficient: float | None = Field(
        default=None, gt=0, description="target_l0: starting lambda (architecture default if None)"
    )
    initial_threshold: float = Field(default=0.05, ge=0, description="jumprelu: initial per-latent threshold")
    threshold_momentum: float = Field(
        default=0.99, ge=0, lt=1, description="batchtopk/matryoshka: EMA momentum of the inference threshold"
    )
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = Field(
        default="geometric_median", description="how init_from_data sets b_dec"
    )
    decoder_init_norm: float = Field(
        default=0.1,
        gt=0,
        description="standard/jumprelu/gated: initial decoder row norm (Anthropic April 2024)",
    )
    seed: int = Field(default=0, description="weight initialisation seed")

    @model_validator(mode="after")
    def _check(self) -> TrainingSAEConfig:
        self.architecture = canonical_architecture(self.architecture)
        arch = self.architecture
        if self.bandwidth is None:
            self.bandwidth = DEFAULT_BANDWIDTH
        k_note = ""
        if self.k is None and arch in TOPK_FAMILY:
            self.k, k_note = DEFAULT_K, " (the default)"
        if self.k is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k}{k_note} is larger than d_sae={self.d_sae}; choose k <= d_sae")
        if self.k_aux is not None and self.k_aux > self.d_sae:
            raise ValueError(f"k_aux={self.k_aux} is larger than d_sae={self.d_sae}; choose k_aux <= d_sae")
        if self.sparsity_coefficient is not None and self.target_l0 is not None:
            raise ValueError("give either sparsity_coefficient or target_l0, not both")
        if arch in TOPK_FAMILY and (self.sparsity_coefficient is not None or self.target_l0 is not None):
            raise ValueError(f"{arch} sets its sparsity with k; sparsity_coefficient/target_l0 do not apply")
        if self.target_l0 is not None and self.target_l0 > self.d_sae:
            raise ValueError(f"target_l0={self.target_l0} is larger than d_sae={self.d_sae}")
        if arch in PENALTY_FAMILY and self.sparsity_coefficient is None and self.target_l0 is None:
            self.target_l0 = float(self.k or min(DEFAULT_K, max(1, self.d_sae // 2)))
        if self.group_sizes is not None and arch != "matryoshka":
            raise ValueError("group_sizes only applies to architecture 'matryoshka'")
        if arch == "matryoshka":
            if self.group_sizes is None:
                self.group_sizes = default_group_sizes(self.d_sae)
            if any(g <= 0 for g in self.group_sizes) or sum(self.group_sizes) != self.d_sae:
                raise ValueError(
                    f"group_sizes={self.group_sizes} must be positive and sum to d_sae={self.d_sae} "
                    f"(they sum to {sum(self.group_sizes)})"
                )
        return self

    @property
    def uses_target_l0(self) -> bool:
        return self.target_l0 is not None


def default_group_sizes(d_sae: int, n_groups: int = 5) -> list[int]:
    """Doubling nested groups, e.g. d_sae=1024 -> [64, 64, 128, 256, 512] (the last one takes the rest)."""
    sizes: list[int] = []
    first = max(1, d_sae >> (n_groups - 1))
    size = first
    while sum(sizes) + size < d_sae and len(sizes) < n_groups - 1:
        sizes.append(size)
        size = sum(sizes)
    sizes.append(d_sae - sum(sizes))
    return sizes
