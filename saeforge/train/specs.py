"""`ResolvedSAE`: one `SAESpec` checked against the data and the registry, with every default filled in.

A spec leaves d_sae, sparsity and optimisation fields unset; resolving it against the data's d_in gives the
TrainingSAEConfig the SAE is built from and the optimiser settings it trains with. This happens for every SAE
before any work starts, so a bad spec fails fast with the field named (`saes[i].k`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from saeforge import sae as sae_api
from saeforge.errors import ConfigError, did_you_mean, format_validation_error
from saeforge.sae.config import TrainingSAEConfig
from saeforge.sparsity import SPARSITY_FIELDS
from saeforge.train.config import SAESpec, TrainConfig
from saeforge.train.defaults import OptimSettings, resolve_optim


@dataclass(frozen=True)
class ResolvedSAE:
    """spec: as written. sae_cfg: what the training SAE is built from. optim: lr, betas, schedule, clipping.
    dead_tokens: after how many tokens without firing a latent is dead (AuxK trains it; the dead fraction).
    live_rate: a latent firing on fewer than live_rate of the tokens of its dead window is dead too
    (`TrainingSAE.rare_fraction` of the design rate k / d_sae; 0: no such rule; train/dead.py)."""

    spec: SAESpec
    sae_cfg: TrainingSAEConfig
    d_in: int
    d_sae: int
    optim: OptimSettings
    dead_tokens: int
    live_rate: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        """What config.resolved.json and checkpoints record per SAE."""
        return {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            **self.optim.model_dump(mode="json"),
            "dead_tokens": self.dead_tokens,
            "live_rate": self.live_rate,
        }


def _training_sae_config(
    spec: SAESpec, i: int, layout_fields: dict[str, Any], d_sae: int
) -> TrainingSAEConfig:
    fields = {f: getattr(spec, f) for f in SPARSITY_FIELDS if getattr(spec, f) is not None}
    if spec.skip_connection:
        fields["skip_connection"] = True
    fields.update(spec.options)
    try:
        # Through the package, so that tests can substitute a scripted architecture.
        return sae_api.TrainingSAEConfig(
            architecture=spec.architecture, d_sae=d_sae, seed=spec.seed, **layout_fields, **fields
        )
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(
                e, f"SAE '{spec.name}'", prefix=f"saes[{i}]", model=sae_api.TrainingSAEConfig
            )
        ) from None


def resolve_specs(
    cfg: TrainConfig, d_in: int, data_source: str, layout_fields: dict[str, Any] | None = None
) -> list[ResolvedSAE]:
    """Checks every SAE of `cfg` against the data (`d_in`, described as `data_source`) and the registry.

    layout_fields: the TrainingSAEConfig fields the data layout sets (kind, d_in, n_sites, d_out; default d_in),
    see train/layout.py."""
    known = sorted(sae_api.TRAINING_ARCHITECTURES)
    resolved = []
    for i, spec in enumerate(cfg.saes):
        where = f"saes[{i}] ({spec.name})"
        if spec.architecture not in sae_api.TRAINING_ARCHITECTURES:
            raise ConfigError(
                f"{where}.architecture: unknown architecture '{spec.architecture}'; known: {known}."
                + did_you_mean(spec.architecture, sae_api.TRAINING_ARCHITECTURES)
            )
        spec.check_d_in(d_in, where, data_source)
        d_sae = spec.resolved_d_sae(d_in)
        if spec.k is not None and spec.k > d_sae:
            raise ConfigError(f"{where}.k: k={spec.k} exceeds d_sae={d_sae}; lower k or raise d_sae")
        sae_cfg = _training_sae_config(spec, i, layout_fields or {"d_in": d_in}, d_sae)
        optim = resolve_optim(spec, sae_cfg.architecture, d_sae, cfg.total_steps)
        dead = dead_tokens(cfg, sae_cfg.architecture)
        resolved.append(ResolvedSAE(spec, sae_cfg, d_in, d_sae, optim, dead, live_rate(sae_cfg)))
    return resolved


def dead_tokens(cfg: TrainConfig, architecture: str) -> int:
    """The run's `dead_tokens` when given; else the architecture's `dead_batches` batches, capped at the run's
    default (`TrainConfig.dead_after`); else that default."""
    # An architecture registered without TrainingSAE's attributes (a test double, a plug-in) has none.
    batches = getattr(sae_api.TRAINING_ARCHITECTURES[architecture], "dead_batches", None)
    if cfg.dead_tokens is not None or batches is None:
        return cfg.dead_after
    return min(batches * cfg.batch_size, cfg.dead_after)


def live_rate(sae_cfg: TrainingSAEConfig) -> float:
    """The firing rate per token under which a latent is dead (train/dead.py): the architecture's `rare_fraction`
    of the design rate k / d_sae (of the whole SAE), or 0 (no such rule)."""
    fraction = getattr(sae_api.TRAINING_ARCHITECTURES[sae_cfg.architecture], "rare_fraction", None)
    k = getattr(sae_cfg, "k", None)  # an architecture without k (a test double, a plug-in) has no design rate
    if fraction is None or k is None:
        return 0.0
    return fraction * k / sae_cfg.d_sae


def budget_warnings(resolved: list[ResolvedSAE], tokens: int) -> list[str]:
    """One message per SAE whose configuration needs more than `tokens` training tokens by its documented
    measurement (`TrainingSAE.tokens_needed`): the architecture, the budget, the tokens needed and the fix; and
    one per SAE with a documented shortfall that no budget fixes (`TrainingSAE.known_shortfall`)."""
    out = []
    for r in resolved:
        cls = sae_api.TRAINING_ARCHITECTURES[r.sae_cfg.architecture]
        # An architecture registered without TrainingSAE's hooks (a test double, a plug-in) has nothing to say.
        note = getattr(cls, "known_shortfall", lambda cfg: None)(r.sae_cfg)
        if note is not None:
            out.append(f"SAE '{r.name}' ({r.sae_cfg.architecture}): {note}")
        need = getattr(cls, "tokens_needed", lambda cfg: None)(r.sae_cfg)
        if need is not None and tokens < need[0]:
            out.append(
                f"SAE '{r.name}' ({r.sae_cfg.architecture}): {tokens:,} training tokens, but this configuration "
                f"needs about {need[0]:,} to reach its target L0 and recover features (docs/architectures.md); "
                f"{need[1]}"
            )
    return out
