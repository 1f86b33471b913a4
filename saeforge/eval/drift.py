"""Latent drift: how one SAE's latents fire on two activation stores (SAE transfer to a fine-tuned model).

For latent i with c_i firings in n tokens of a store, the frequency is f_i = c_i / n. Between the base store
(b) and the compare store (c, e.g. the fine-tuned model's activations at the same hook):

    log10_ratio_i = log10((c_i^c + 1/2) / (n^c + 1)) - log10((c_i^b + 1/2) / (n^b + 1))

(add-half smoothing, so a latent that never fires on one side has a finite ratio). With the frequency floor
`floor = max(min_frequency, 10 / min(n^b, n^c))` (a frequency below it rests on fewer than ten firings):

- a latent *vanishes* when f^b >= floor and f^c <= f^b / ratio;
- a latent *appears* when f^c >= floor and f^b <= f^c / ratio;
- every other latent is `kept` (its drift is still in log10_ratio).

`ratio` (default 10) and `min_frequency` (default 1e-4) are EvalConfig.drift_ratio / drift_min_frequency.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from saeforge.atomic import write_text
from saeforge.eval.config import DRIFT_MIN_FREQUENCY, DRIFT_RATIO

STATUSES = ("kept", "appeared", "vanished")
MIN_FIRINGS = 10
CHANGE_KEYS = ("fvu", "l0", "dead_fraction", "ce_loss_score", "kl_div_score", "ce_delta", "pooled_cosine")


def latent_drift(
    fires_base: np.ndarray,
    n_base: int,
    fires_compare: np.ndarray,
    n_compare: int,
    ratio: float = DRIFT_RATIO,
    min_frequency: float = DRIFT_MIN_FREQUENCY,
) -> dict[str, Any]:
    """Per-latent drift between two stores (module docstring).

    fires_base, fires_compare: [d_sae] counts of tokens on which each latent fired; n_base, n_compare: tokens.
    Returns `summary` (scalars), `latents` ({"freq_base", "freq_compare", "log10_ratio": [d_sae] float64,
    "status": [d_sae] str}) and `appeared` / `vanished`: [{"latent", "freq_base", "freq_compare",
    "log10_ratio"}], strongest change first.
    """
    cb = np.asarray(fires_base, dtype=np.float64)
    cc = np.asarray(fires_compare, dtype=np.float64)
    if cb.shape != cc.shape or cb.ndim != 1:
        raise ValueError(f"firing counts must both be [d_sae], got {cb.shape} and {cc.shape}")
    if n_base <= 0 or n_compare <= 0:
        raise ValueError("both stores need at least one token")
    fb, fc = cb / n_base, cc / n_compare
    log_ratio = np.log10((cc + 0.5) / (n_compare + 1)) - np.log10((cb + 0.5) / (n_base + 1))
    floor = max(min_frequency, MIN_FIRINGS / min(n_base, n_compare))
    vanished = (fb >= floor) & (fc <= fb / ratio)
    appeared = (fc >= floor) & (fb <= fc / ratio)
    status = np.full(cb.shape, "kept", dtype=object)
    status[vanished], status[appeared] = "vanished", "appeared"
    alive = (cb > 0) | (cc > 0)

    def listed(mask: np.ndarray, sign: float) -> list[dict[str, Any]]:
        idx = np.nonzero(mask)[0]
        idx = idx[np.argsort(-sign * log_ratio[idx], kind="stable")]
        return [
            {
                "latent": int(i),
                "freq_base": float(fb[i]),
                "freq_compare": float(fc[i]),
                "log10_ratio": float(log_ratio[i]),
            }
            for i in idx
        ]

    both = (cb > 0) & (cc > 0)
    corr = None
    if both.sum() >= 2 and np.ptp(np.log10(fb[both])) > 0 and np.ptp(np.log10(fc[both])) > 0:
        corr = float(np.corrcoef(np.log10(fb[both]), np.log10(fc[both]))[0, 1])
    summary = {
        "ratio": float(ratio),
        "frequency_floor": floor,
        "appeared_count": int(appeared.sum()),
        "vanished_count": int(vanished.sum()),
        "alive_base": int((cb > 0).sum()),
        "alive_compare": int((cc > 0).sum()),
        "median_abs_log10_ratio": float(np.median(np.abs(log_ratio[alive]))) if alive.any() else None,
        "log10_frequency_correlation": corr,
    }
    return {
        "summary": summary,
        "latents": {"freq_base": fb, "freq_compare": fc, "log10_ratio": log_ratio, "status": status},
        "appeared": listed(appeared, 1.0),
        "vanished": listed(vanished, -1.0),
    }


def metric_changes(base: Mapping[str, Any], compare: Mapping[str, Any]) -> dict[str, float | None]:
    """compare - base for the headline metrics measured on both (None where either is missing)."""
    return {
        f"{k}_change": (
            None if base.get(k) is None or compare.get(k) is None else float(compare[k]) - float(base[k])
        )
        for k in CHANGE_KEYS
    }


def drift_line(result: Mapping[str, Any]) -> str:
    """One line summing up a result's drift (for the CLI)."""

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.4g}"

    parts = [
        f"{result['name']} on the compare store: fvu {fmt(result.get('compare.fvu'))} (base {fmt(result.get('fvu'))})",
        f"l0 {fmt(result.get('compare.l0'))} (base {fmt(result.get('l0'))})",
    ]
    if result.get("compare.ce_loss_score") is not None:
        parts.append(
            f"ce_loss_score {fmt(result['compare.ce_loss_score'])} (base {fmt(result.get('ce_loss_score'))})"
        )
    parts.append(
        f"{result['drift.appeared_count']} latents appeared, {result['drift.vanished_count']} vanished "
        f"(x{result['drift.ratio']:g}, floor {result['drift.frequency_floor']:.2g}; drift.json)"
    )
    return "; ".join(parts)


def write_drift(result: Mapping[str, Any], directory: str | Path) -> dict[str, Path]:
    """Writes `drift.json` (summary, thresholds, appeared/vanished lists), `drift.csv` (one row per latent) and
    `drift_frequency.png` for a result of run_eval with a compare store; returns {file name: path}."""
    from saeforge.report.drift import drift_figure
    from saeforge.report.figures import save_png

    drift = result["drift"]
    directory = Path(directory)
    doc = {
        "base_activations": result.get("base_activations"),
        "compare_activations": result.get("compare_activations"),
        "summary": {
            **drift["summary"],
            **{f"{k}_change": result.get(f"drift.{k}_change") for k in CHANGE_KEYS},
        },
        "appeared": drift["appeared"],
        "vanished": drift["vanished"],
    }
    lat = drift["latents"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["latent", "freq_base", "freq_compare", "log10_ratio", "status"])
    for i in range(len(lat["status"])):
        writer.writerow(
            [
                i,
                repr(float(lat["freq_base"][i])),
                repr(float(lat["freq_compare"][i])),
                repr(float(lat["log10_ratio"][i])),
                lat["status"][i],
            ]
        )
    fig = drift_figure(
        lat["freq_base"],
        lat["freq_compare"],
        lat["status"],
        drift["summary"]["frequency_floor"],
        str(result.get("name", "")),
    )
    return {
        "drift.json": write_text(directory / "drift.json", json.dumps(doc, indent=2) + "\n"),
        "drift.csv": write_text(directory / "drift.csv", buf.getvalue()),
        "drift_frequency.png": save_png(fig, directory / "drift_frequency.png"),
    }
