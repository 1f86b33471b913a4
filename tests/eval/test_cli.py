"""`saeforge eval` and `run_eval` end to end on a hand-written store and saved SAEs."""

from __future__ import annotations

import csv
import json

import pytest

from saeforge.eval import EvalConfig, run_eval


@pytest.fixture
def setup(tmp_path, saes, acts, store_tools):
    x = acts(900, 16, seed=5)
    store = store_tools.write_store(tmp_path / "store", x)
    dirs = []
    for seed in (0, 1):  # one config, two seeds: compared for stability
        dirs.append(store_tools.save_sae(saes.random(16, 64, seed=seed), tmp_path / f"seed{seed}", seed))
    dirs.append(store_tools.save_sae(saes.random(16, 32, seed=7), tmp_path / "small"))
    return store, dirs, x


def test_run_eval_reads_the_store_once_per_sae(setup):
    store, dirs, x = setup
    results = run_eval(EvalConfig(saes=dirs, activations=store, batch_size=128, tokens=800))
    assert [r["name"] for r in results] == ["seed0", "seed1", "small"]
    assert all(r["tokens"] == 800 for r in results)
    assert results[0]["stability_partners"] == 1 and "stability_match_fraction" in results[1]
    assert 0 <= results[0]["stability_hungarian_cosine"] <= 1
    assert "stability_match_fraction" not in results[2]  # no partner of its config


def test_eval_cli_writes_metrics_table_and_plots(cli, setup, tmp_path):
    store, dirs, _ = setup
    out = tmp_path / "eval"
    args = ["eval", "--activations", store, "--out", out, "--batch-size", "200"]
    proc = cli(*args, *[a for d in dirs for a in ("--sae", d)])
    for name in ("seed0", "seed1", "small"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["tokens"] == 900 and metrics["verdict"] in proc.stdout
        assert metrics["verdict_evidence"].split(":")[0] in proc.stdout
        assert (out / name / "density_histogram.png").exists()
    assert (out / "pareto_l0_fvu.png").exists()
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["name"] for r in rows] == ["seed0", "seed1", "small"]


def test_eval_cli_refuses_a_store_of_another_width(cli, tmp_path, saes, acts, store_tools):
    store = store_tools.write_store(tmp_path / "store", acts(64, 12))
    sae = store_tools.save_sae(saes.random(16, 32), tmp_path / "sae")
    proc = cli("eval", "--sae", sae, "--activations", store, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2  # a usage error (saeforge.errors), as in train and interpret
    assert "d_in 16" in proc.stderr and "d_in 12" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_eval_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="model"):
        EvalConfig(saes=[tmp_path], activations=tmp_path, data="builtin")
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(saes=[tmp_path], activations=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="saes"):
        EvalConfig(saes=[], activations=tmp_path)


def test_eval_help_lists_every_option(cli):
    out = cli("eval", "--help", COLUMNS="200").stdout  # wide enough that no option name is cut
    for opt in (
        "--sae",
        "--activations",
        "--model",
        "--data",
        "--extra-data",
        "--out",
        "--tokens",
        "--batch-size",
    ):
        assert opt in out
