"""One word per SAE (good, deceptively-good, dead, duplicated, noisy) and the numbers behind it.

The rules are written out in docs/evaluation.md; the thresholds are the constants below. Metrics are named
and rounded as every table shows them (`saeforge.report.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saeforge.report.metrics import metric_text

VERDICTS = ("good", "deceptively-good", "dead", "duplicated", "noisy")

FVU_GOOD = 0.3  # reconstruction is good when fvu <= FVU_GOOD ...
CE_SCORE_GOOD = (
    0.8  # ... and, when measured, ce_loss_score (pooled_cosine_score for encoders) >= CE_SCORE_GOOD
)
DEAD_BAD = 0.3  # dead_fraction at which the dictionary is unhealthy
DEAD_ALL = 0.9  # dead_fraction at which the SAE is dead whatever its reconstruction
DUPLICATION_BAD = 0.1
DUPLICATION_ALL = 0.5
DENSE_BAD = 0.01  # dense_fraction_30 (latents firing on > 30% of tokens)
L0_DENSE_RATIO = 0.5  # l0 >= L0_DENSE_RATIO * d_in: not a sparse code


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def verdict(m: Mapping[str, Any]) -> tuple[str, str]:
    """(verdict, evidence) from flat metrics (keys of `evaluate`). Rules: first match wins.

    1. dead: dead_fraction >= DEAD_ALL, or reconstruction poor and dead_fraction >= DEAD_BAD.
    2. duplicated: duplication >= DUPLICATION_ALL, or reconstruction poor and duplication >= DUPLICATION_BAD.
    3. noisy: reconstruction poor (fvu > FVU_GOOD or undefined, or ce_loss_score / pooled_cosine_score <
       CE_SCORE_GOOD).
    4. deceptively-good: reconstruction good, but dead_fraction >= DEAD_BAD, duplication >= DUPLICATION_BAD,
       dense_fraction_30 >= DENSE_BAD, or l0 >= L0_DENSE_RATIO * d_in.
    5. good.
    """
    fvu = m.get("fvu")
    ce = m.get("ce_loss_score")
    pooled = m.get("pooled_cosine_score")
    dead = m.get("dead_fraction") or 0.0
    dup = m.get("duplication") or 0.0
    dense = m.get("dense_fraction_30") or 0.0
    l0, d_in = m.get("l0"), m.get("d_in")

    recon = [metric_text("fvu", fvu) if fvu is not None else "FVU undefined"]
    if ce is not None:
        recon.append(metric_text("ce_loss_score", ce))
    if pooled is not None:
        recon.append(metric_text("pooled_cosine_score", pooled))
    poor = fvu is None or fvu > FVU_GOOD or any(s is not None and s < CE_SCORE_GOOD for s in (ce, pooled))

    problems = []
    if dead >= DEAD_BAD:
        problems.append(f"{_pct(dead)} dead")
    if dup >= DUPLICATION_BAD:
        problems.append(f"duplication {dup:.2g}")
    if dense >= DENSE_BAD:
        problems.append(f"{_pct(dense)} of latents fire on >30% of tokens")
    if l0 is not None and d_in and l0 >= L0_DENSE_RATIO * d_in:
        problems.append(f"L0 {l0:.3g} for d_in {d_in} (not sparse)")
    caveat = ""
    if dead >= DEAD_BAD and m.get("dead_reliable") is False:
        caveat = f" (dead counted over only {m.get('tokens')} tokens)"

    if dead >= DEAD_ALL or (poor and dead >= DEAD_BAD):
        label = "dead"
    elif dup >= DUPLICATION_ALL or (poor and dup >= DUPLICATION_BAD):
        label = "duplicated"
    elif poor:
        label = "noisy"
    elif problems:
        label = "deceptively-good"
    else:
        label = "good"

    head = ", ".join(recon)
    if label == "good":
        detail = [f"L0 {l0:.3g}" if l0 is not None else None, f"{_pct(dead)} dead", f"duplication {dup:.2g}"]
        return label, f"good: {head}, " + ", ".join(d for d in detail if d)
    if label == "noisy":
        reason = "reconstruction poor" + (", and " + ", ".join(problems) if problems else "")
        return label, f"noisy: {head}: {reason}{caveat}"
    if label == "deceptively-good":
        return label, f"deceptively good: {head}, but " + ", ".join(problems) + caveat
    return label, f"{label}: {head}, " + ", ".join(problems) + caveat
