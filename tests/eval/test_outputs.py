"""metrics.json, the comparison table, plots and the report section."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from saeforge.eval import evaluate, write_eval_outputs, write_metrics
from saeforge.report.evaluation import COMPARISON_KEYS, evaluation_section_html
from saeforge.report.figures import pareto_front


@pytest.fixture
def results(saes, acts):
    x = acts(512, 12)
    out = []
    for i, d_sae in enumerate((24, 48)):
        m = evaluate(saes.random(12, d_sae, seed=i), x.split(200))
        out.append({"name": f"sae{i}", **m})
    return out


def test_write_metrics_is_flat_json(tmp_path, results):
    r = dict(results[0], weird=float("nan"))
    path = write_metrics(r, tmp_path)
    data = json.loads(path.read_text())
    assert all(not isinstance(v, (dict, list)) for v in data.values())
    for key in ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction_10", "dense_fraction_30"):
        assert data[key] == pytest.approx(r[key])
    assert data["duplication"] == r["duplication"] and data["verdict"] == r["verdict"]
    assert data["weird"] is None and "latent_density" not in data
    density = load_file(str(tmp_path / "latent_density.safetensors"))["latent_density"]
    np.testing.assert_array_equal(density.numpy(), r["latent_density"])
    assert not list(tmp_path.glob("*.tmp"))


def test_write_eval_outputs(tmp_path, results):
    paths = write_eval_outputs(results, tmp_path)
    for name in ("sae0", "sae1"):
        assert (tmp_path / name / "metrics.json").exists()
        assert (tmp_path / name / "density_histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pareto_l0_fvu.png").exists()
    assert "pareto_l0_ce_loss_score.png" not in paths  # no CE scores measured
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [r["name"] for r in rows] == ["sae0", "sae1"] and list(rows[0]) == list(COMPARISON_KEYS)
    assert float(rows[1]["fvu"]) == pytest.approx(results[1]["fvu"])
    assert json.loads((tmp_path / "comparison.json").read_text())[0]["verdict"] == results[0]["verdict"]


def test_evaluation_section_html(results):
    html = evaluation_section_html(results)
    assert html.startswith('<section class="evaluation">') and html.endswith("</section>")
    assert html.count("<img") == 3  # two density histograms, one L0-FVU plot
    assert results[0]["verdict_evidence"].split(":")[0] in html


def test_pareto_front():
    l0 = [10, 20, 30, 40]
    fvu = [0.5, 0.6, 0.2, 0.1]  # (20, 0.6) is dominated by (10, 0.5)
    assert pareto_front(l0, fvu, higher_is_better=False) == [0, 2, 3]
    assert pareto_front(l0, [0.5, 0.6, 0.2, 0.9], higher_is_better=True) == [0, 1, 3]
