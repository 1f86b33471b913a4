"""Writing evaluations: metrics.json per SAE, the comparison table (CSV/JSON), plots, and the report section."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from saeforge.atomic import write_text, write_with
from saeforge.eval.drift import write_drift
from saeforge.eval.plots import (
    density_histogram_figure,
    density_histogram_png,
    figure_png_bytes,
    pareto_figure,
    save_png,
)

COMPARISON_KEYS = (
    "name",
    "verdict",
    "d_sae",
    "l0",
    "fvu",
    "explained_variance",
    "ce_loss_score",
    "kl_div_score",
    "pooled_cosine",
    "dead_fraction",
    "dense_fraction_10",
    "duplication",
    "absorption_proxy",
    "stability_match_fraction",
)
PARETO_PLOTS = {"pareto_l0_fvu.png": ("fvu", False), "pareto_l0_ce_loss_score.png": ("ce_loss_score", True)}


def _clean(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of a result (arrays such as `latent_density` left out; NaN -> null)."""
    return {
        k: _clean(v)
        for k, v in result.items()
        if isinstance(v, (int, float, str, bool, np.generic)) or v is None
    }


def write_metrics(result: Mapping[str, Any], directory: str | Path) -> Path:
    """Writes `metrics.json` (flat scalars) and, when present, `latent_density.safetensors` ([d_sae] float64)."""
    directory = Path(directory)
    path = write_text(directory / "metrics.json", json.dumps(scalar_metrics(result), indent=2) + "\n")
    density = result.get("latent_density")
    if density is not None:
        tensors = {"latent_density": torch.as_tensor(np.asarray(density, dtype=np.float64))}
        write_with(directory / "latent_density.safetensors", lambda p: save_file(tensors, p))
    return path


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE with the COMPARISON_KEYS columns (None where not measured)."""
    return [{k: _clean(r.get(k)) for k in COMPARISON_KEYS} for r in results]


def write_eval_outputs(results: Sequence[Mapping[str, Any]], out: str | Path) -> dict[str, Path]:
    """Writes everything an evaluation produces under `out`; returns {what: path}.

    out/<name>/metrics.json, out/<name>/latent_density.safetensors, out/<name>/density_histogram.png per SAE
    (name: the result's `name`, else sae<i>), and with a compare store out/<name>/drift.json, drift.csv and
    drift_frequency.png;
    out/comparison.csv and out/comparison.json; out/pareto_l0_fvu.png and out/pareto_l0_ce_loss_score.png
    when there are several SAEs (the latter only when CE scores were measured).
    """
    out = Path(out)
    paths: dict[str, Path] = {}
    for i, r in enumerate(results):
        name = r.get("name") or f"sae{i}"
        paths[f"{name}/metrics.json"] = write_metrics(r, out / name)
        if r.get("latent_density") is not None:
            png = out / name / "density_histogram.png"
            paths[f"{name}/density_histogram.png"] = density_histogram_png(
                r["latent_density"], png, name, r.get("dead_density_floor")
            )
        if r.get("drift") is not None:
            paths.update({f"{name}/{k}": v for k, v in write_drift(r, out / name).items()})
    rows = comparison_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COMPARISON_KEYS))
    writer.writeheader()
    writer.writerows(rows)
    paths["comparison.csv"] = write_text(out / "comparison.csv", buf.getvalue())
    paths["comparison.json"] = write_text(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
    if len(results) > 1:
        for filename, (key, higher) in PARETO_PLOTS.items():
            fig = pareto_figure(results, key, higher)
            if fig is not None:
                paths[filename] = save_png(fig, out / filename)
    return paths


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def evaluation_section_html(results: Sequence[Mapping[str, Any]]) -> str:
    """A self-contained HTML <section> (table, verdicts with evidence, embedded PNG plots) for report.html."""
    rows = comparison_rows(results)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in COMPARISON_KEYS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row[k]))}</td>" for k in COMPARISON_KEYS) + "</tr>"
        for row in rows
    )
    parts = [
        '<section class="evaluation">',
        "<h2>Evaluation</h2>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        "<ul>",
        *(
            f"<li><b>{html.escape(str(r['name']))}</b>: {html.escape(str(r.get('verdict_evidence', '')))}</li>"
            for r in results
        ),
        "</ul>",
    ]
    for r in results:
        if r.get("latent_density") is not None:
            fig = density_histogram_figure(r["latent_density"], str(r["name"]), r.get("dead_density_floor"))
            parts.append(_img(figure_png_bytes(fig), f"latent density histogram of {r['name']}"))
    if len(results) > 1:
        for key, higher in PARETO_PLOTS.values():
            fig = pareto_figure(results, key, higher)
            if fig is not None:
                parts.append(_img(figure_png_bytes(fig), f"L0 against {key}"))
    parts.append("</section>")
    return "\n".join(parts)
