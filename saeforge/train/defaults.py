"""Per-architecture training defaults, taken from each architecture's paper (table in docs/training.md).

Warm-up lengths from the papers are in steps of runs with billions of tokens; for short runs they are capped
at a fraction of the run so that the penalty (or the learning rate) reaches its final value.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from saeforge.train.config import LrSchedule, SAESpec

TOPK_FAMILY = frozenset({"topk", "batchtopk", "matryoshka"})


class OptimSettings(BaseModel):
    """The resolved optimisation settings of one SAE (every field set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float
    betas: tuple[float, float]
    eps: float
    lr_schedule: LrSchedule
    lr_warmup_steps: int
    lr_decay_steps: int
    lr_end_fraction: float
    sparsity_warmup_steps: int
    grad_clip_norm: float


def _capped(paper_steps: int, total_steps: int, fraction: float) -> int:
    return min(paper_steps, int(total_steps * fraction))


def architecture_defaults(architecture: str, d_sae: int, total_steps: int) -> dict:
    """The paper defaults of `architecture` for an SAE of d_sae latents trained for total_steps steps."""
    if architecture in TOPK_FAMILY:
        # Gao et al. 2024 (arXiv 2406.04093): lr 2e-4 at 2^14 latents, scaled by 1/sqrt(d_sae / 2^14);
        # Adam eps 6.25e-10; constant lr after a short warm-up.
        return dict(
            lr=2e-4 / math.sqrt(d_sae / 2**14),
            betas=(0.9, 0.999),
            eps=6.25e-10,
            lr_schedule="constant",
            lr_warmup_steps=_capped(100, total_steps, 0.01),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=0,
            grad_clip_norm=1.0,
        )
    if architecture == "jumprelu":
        # Rajamanoharan et al. 2024 (arXiv 2407.14435) / Gemma Scope: Adam betas (0, 0.999), eps 1e-8,
        # lr 7e-5 with a 1,000-step warm-up, sparsity coefficient warmed up linearly over 10,000 steps.
        return dict(
            lr=7e-5,
            betas=(0.0, 0.999),
            eps=1e-8,
            lr_schedule="constant",
            lr_warmup_steps=_capped(1_000, total_steps, 0.05),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=_capped(10_000, total_steps, 0.1),
            grad_clip_norm=0.0,
        )
    if architecture == "gated":
        # Rajamanoharan et al. 2024 (arXiv 2404.16014): Adam betas (0, 0.999), lr 3e-4.
        return dict(
            lr=3e-4,
            betas=(0.0, 0.999),
            eps=1e-8,
            lr_schedule="constant",
            lr_warmup_steps=_capped(1_000, total_steps, 0.05),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=_capped(1_000, total_steps, 0.05),
            grad_clip_norm=0.0,
        )
    if architecture == "standard":
        # Anthropic, "Circuits Updates - April 2024": Adam (0.9, 0.999), lr 5e-5, lambda warmed up over the
        # first 5% of training, lr decayed linearly to zero over the last 20%, gradient norm clipped to 1.
        return dict(
            lr=5e-5,
            betas=(0.9, 0.999),
            eps=1e-8,
            lr_schedule="linear",
            lr_warmup_steps=0,
            lr_decay_steps=int(total_steps * 0.2),
            lr_end_fraction=0.0,
            sparsity_warmup_steps=int(total_steps * 0.05),
            grad_clip_norm=1.0,
        )
    return dict(
        lr=3e-4,
        betas=(0.9, 0.999),
        eps=1e-8,
        lr_schedule="constant",
        lr_warmup_steps=_capped(1_000, total_steps, 0.05),
        lr_end_fraction=0.0,
        sparsity_warmup_steps=0,
        grad_clip_norm=0.0,
    )


def resolve_optim(spec: SAESpec, architecture: str, d_sae: int, total_steps: int) -> OptimSettings:
    """The spec's settings, each unset field filled from the defaults of `architecture` (its canonical name)."""
    values = architecture_defaults(architecture, d_sae, total_steps)
    for key in OptimSettings.model_fields:
        given = getattr(spec, key)
        if given is not None:
            values[key] = given
    warmup = values["lr_warmup_steps"]
    if values.get("lr_decay_steps") is None:
        values["lr_decay_steps"] = max(total_steps - warmup, 0)
    return OptimSettings(**values)
