"""Writing evaluations: metrics.json per SAE, the comparison table (CSV/JSON), plots, and the report section."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from saeforge.atomic import write_text, write_with
from saeforge.eval.drift import write_drift
from saeforge.report.evaluation import PARETO_PLOTS, comparison_keys, comparison_rows
from saeforge.report.figures import density_histogram_png, pareto_figure, save_png
from saeforge.report.format import plain


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of a result (arrays such as `latent_density` left out; NaN -> null)."""
    return {
        k: plain(v)
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
    writer = csv.DictWriter(buf, fieldnames=comparison_keys(results))
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
