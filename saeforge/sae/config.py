"""`TrainingSAEConfig`: one typed config for every training architecture, validated once.

The config is composed of the fields every architecture shares (below) and each registered architecture's
config fragment (its `config_fields`, declared in its own file). Validation runs the shared checks, then the
architecture's `check_config`, then refuses a field that only other architectures read. Composition happens when
this module is imported, after `saeforge.sae` has imported (and so registered) every architecture: an architecture
module must therefore import this module only for type checking.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeforge.sae import registry
from saeforge.sparsity import setting


class SharedFields(BaseModel):
    """The fields every architecture reads."""

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(description=registry.describe())
    kind: str = Field(
        default="sae",
        description="sae (reads and writes one site), or a registered kind: transcoder, crosscoder",
    )
    d_in: int = Field(gt=0, description="input width (a crosscoder's: of each site)")
    d_sae: int = Field(gt=0, description="number of latents")
    k: int | None = setting("k")  # default DEFAULT_K (training.py)
    aux_coefficient: float | None = Field(
        default=None,
        ge=0,
        description="AuxK weight (TopK family, default 1/32) or gated's auxiliary reconstruction weight (1)",
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


class TrainingSAEConfig(SharedFields, *registry.config_fragments()):
    """How to build and train one SAE: the shared fields and every architecture's fragment.

    Sparsity is set by `k` for the TopK family (topk, batchtopk, matryoshka) and by `sparsity_coefficient` or
    `target_l0` for the penalty architectures (standard, jumprelu, gated). With neither given, the penalty
    architectures aim at `target_l0 = k` (k defaults to 32, or d_sae // 2 for penalty SAEs narrower than 64), so
    every architecture defaults to the same L0.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _check(self) -> TrainingSAEConfig:
        self.architecture = registry.canonical_architecture(self.architecture)
        cls = registry.training_class(self.architecture, self.kind)
        cls.check_config(self)
        if self.k is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}; choose k <= d_sae")
        _refuse_foreign_fields(self, cls)
        return self


def _field_names(cls: type) -> set[str]:
    return {name for fragment in registry.fragments_of(cls) for name in fragment.model_fields}


def _refuse_foreign_fields(cfg: TrainingSAEConfig, cls: type) -> None:
    """A field (default None) of another architecture's fragment, given a value, is an error naming its users."""
    own = _field_names(cls)
    for fragment in registry.config_fragments():
        for name, info in fragment.model_fields.items():
            if name in own or info.default is not None or getattr(cfg, name) is None:
                continue
            kinds = [k for k, mixin in registry.KINDS.items() if name in _field_names(mixin)]
            if kinds:
                raise ValueError(
                    f"{name} only applies to kind {' or '.join(map(repr, kinds))}, not {cfg.kind!r}"
                )
            users = [
                a
                for a in registry.training_names()
                if name in _field_names(registry.TRAINING_ARCHITECTURES[a])
            ]
            raise ValueError(
                f"{name} only applies to architecture {' or '.join(map(repr, users))}; "
                f"{cfg.architecture} does not read it"
            )


def create_training_sae(cfg: TrainingSAEConfig | dict):
    """Builds the training SAE `cfg.architecture` names (a dict is validated as a TrainingSAEConfig first)."""
    if not isinstance(cfg, TrainingSAEConfig):
        cfg = TrainingSAEConfig.model_validate(cfg)
    return registry.training_class(cfg.architecture, cfg.kind)(cfg)
