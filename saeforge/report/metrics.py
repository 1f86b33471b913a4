"""One name and one rounding per metric, for every page and sentence that shows one (report tables, verdicts).

`LABELS` maps a metrics.json key to the words a reader sees; `metric_text` is "label value" with the value
rounded by `format.fmt`, so a table cell and a verdict's evidence never disagree on a number.
"""

from __future__ import annotations

from typing import Any

from saeforge.report.format import fmt

LABELS = {
    "name": "SAE",
    "verdict": "verdict",
    "d_sae": "d_sae",
    "l0": "L0",
    "fvu": "FVU",
    "explained_variance": "explained variance",
    "ce_loss_score": "CE score",
    "kl_div_score": "KL score",
    "pooled_cosine": "pooled cosine",
    "pooled_cosine_score": "pooled-cosine score",
    "dead_fraction": "dead fraction",
    "dense_fraction_10": "dense fraction (>10%)",
    "duplication": "duplication",
    "absorption_proxy": "absorption proxy",
    "stability_match_fraction": "stability match",
}


def label(key: str) -> str:
    """What a reader sees for `key` (the key itself when it has no label, e.g. a site's `fvu.<site>`)."""
    return LABELS.get(key, key)


def metric_text(key: str, value: Any) -> str:
    """'FVU 0.4866': the metric's label and its value as every table shows it."""
    return f"{label(key)} {fmt(value)}"
