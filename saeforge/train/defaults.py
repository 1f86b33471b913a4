"""Per-architecture training defaults: each architecture's `optim_defaults`, taken from its paper (table in
docs/training.md), overridden by the fields a spec sets.

Warm-up lengths from the papers are in steps of runs with billions of tokens; for short runs they are capped
at a fraction of the run so that the penalty (or the learning rate) reaches its final value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from saeforge import sae as sae_api
from saeforge.sae.training import TrainingSAE
from saeforge.train.config import LrSchedule, OptimizerName, SAESpec


class OptimSettings(BaseModel):
    """The resolved optimisation settings of one SAE (every field set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: OptimizerName
    lr: float
    betas: tuple[float, float]
    eps: float
    lr_schedule: LrSchedule
    lr_warmup_steps: int
    lr_decay_steps: int
    lr_end_fraction: float
    sparsity_warmup_steps: int
    grad_clip_norm: float


def architecture_defaults(architecture: str, d_sae: int, total_steps: int) -> dict:
    """The paper defaults of `architecture` for an SAE of d_sae latents trained for total_steps steps."""
    cls = sae_api.TRAINING_ARCHITECTURES.get(architecture)
    defaults = getattr(cls, "optim_defaults", TrainingSAE.optim_defaults)
    return {"optimizer": "adam", **defaults(d_sae, total_steps)}


def resolve_optim(spec: SAESpec, architecture: str, d_sae: int, total_steps: int) -> OptimSettings:
    """The spec's settings, each unset field filled from the defaults of `architecture` (its canonical name)."""
    values = architecture_defaults(architecture, d_sae, total_steps)
    family = getattr(sae_api.TRAINING_ARCHITECTURES.get(architecture), "family", "")
    if family == "penalty" and spec.sparsity_coefficient is None:
        # target_l0 (the default): L0 starts at the target (init_firing_rate) and the controller adapts lambda
        # from step 0; a warm-up from lambda = 0 would first let L0 run up to ~d_sae / 4 (docs/architectures.md).
        values["sparsity_warmup_steps"] = 0
    for key in OptimSettings.model_fields:
        given = getattr(spec, key)
        if given is not None:
            values[key] = given
    warmup = values["lr_warmup_steps"]
    if values.get("lr_decay_steps") is None:
        values["lr_decay_steps"] = max(total_steps - warmup, 0)
    return OptimSettings(**values)
