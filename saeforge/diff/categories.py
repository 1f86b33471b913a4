"""How a latent's category is decided (docs/diffing.md explains the choices).

With r = relative_norm, c = decoder_cosine and the Latent Scaling ratios nu^eps, nu^r (saeforge.diff.stats):

    dead            the latent never fired on the diff's rows
    finetuned_only  r >= specific_norm            and nu^eps < max_nu_eps and nu^r < max_nu_r
    base_only       r <= 1 - specific_norm        and nu^eps < max_nu_eps and nu^r < max_nu_r
    changed         not specific by norm, both decoders present, and c < changed_cosine
    shared          everything else

A latent specific by norm whose ratios are too high is *shared*, with `artefact` naming why
("complete_shrinkage" for nu^eps, "latent_decoupling" for nu^r): the concept is there in the other model, the
crosscoder only failed to write it with this latent. A ratio that is undefined (None) does not flag.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

CATEGORIES = ("shared", "changed", "base_only", "finetuned_only", "dead")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    specific_norm: float = Field(
        0.9, gt=0.5, le=1.0, description="relative norm at or above which a latent is fine-tuned only by norm"
    )
    max_nu_eps: float = Field(
        0.3, gt=0, description="error-scaling ratio at or above which: complete shrinkage"
    )
    max_nu_r: float = Field(
        0.5, gt=0, description="reconstruction-scaling ratio at or above which: decoupling"
    )
    changed_cosine: float = Field(
        0.5, ge=-1.0, le=1.0, description="decoder cosine below which a shared latent is `changed`"
    )


def _high(v: float | None, limit: float) -> bool:
    return v is not None and not math.isnan(v) and v >= limit


def categorize(
    relative_norm: float,
    decoder_cosine: float,
    nu_eps: float | None,
    nu_r: float | None,
    freq: float,
    th: Thresholds,
) -> tuple[str, list[str]]:
    """(category, artefacts) of one latent; artefacts lists what demoted a latent specific by norm."""
    if freq <= 0:
        return "dead", []
    if relative_norm >= th.specific_norm or relative_norm <= 1 - th.specific_norm:
        artefacts = []
        if _high(nu_eps, th.max_nu_eps):
            artefacts.append("complete_shrinkage")
        if _high(nu_r, th.max_nu_r):
            artefacts.append("latent_decoupling")
        if not artefacts:
            return ("finetuned_only" if relative_norm >= th.specific_norm else "base_only"), []
        return "shared", artefacts
    if decoder_cosine < th.changed_cosine:
        return "changed", []
    return "shared", []
