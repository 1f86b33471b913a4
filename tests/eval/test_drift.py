"""SAE transfer drift: per-latent frequency change between two stores, metrics on both, appear/vanish lists."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from saeforge.eval import EvalConfig, run_eval
from saeforge.eval.drift import latent_drift


def _naive_log_ratio(cb, nb, cc, nc):
    return math.log10((cc + 0.5) / (nc + 1)) - math.log10((cb + 0.5) / (nb + 1))


def test_latent_drift_on_planted_counts():
    fires_base, n_base = [200, 5, 0, 100, 50, 0], 1000
    fires_cmp, n_cmp = [2, 5, 300, 100, 4, 0], 2000
    d = latent_drift(np.array(fires_base), n_base, np.array(fires_cmp), n_cmp, ratio=10, min_frequency=1e-4)
    # floor = max(1e-4, 10 / 1000): latent 1 (5 firings) is too rare to be called either way.
    assert d["summary"]["frequency_floor"] == pytest.approx(0.01)
    assert list(d["latents"]["status"]) == ["vanished", "kept", "appeared", "kept", "vanished", "kept"]
    want = [_naive_log_ratio(b, n_base, c, n_cmp) for b, c in zip(fires_base, fires_cmp, strict=True)]
    np.testing.assert_allclose(d["latents"]["log10_ratio"], want, rtol=1e-12)
    np.testing.assert_array_equal(d["latents"]["freq_base"], np.array(fires_base) / n_base)
    # Strongest drop first.
    assert [x["latent"] for x in d["vanished"]] == sorted([0, 4], key=lambda i: want[i])
    assert [x["latent"] for x in d["appeared"]] == [2] and d["appeared"][0]["freq_compare"] == 0.15
    assert (d["summary"]["appeared_count"], d["summary"]["vanished_count"]) == (1, 2)
    assert d["summary"]["alive_base"] == 4 and d["summary"]["alive_compare"] == 5
    # A looser ratio keeps latent 4 (0.05 -> 0.002 is a factor 25).
    loose = latent_drift(np.array(fires_base), n_base, np.array(fires_cmp), n_cmp, ratio=30)
    assert [x["latent"] for x in loose["vanished"]] == [0]


def _planted(n: int, freqs: list[float], seed: int) -> torch.Tensor:
    """Rows of [n, len(freqs)]: coordinate j is 1 + noise on a random freqs[j] share of the rows, else noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, len(freqs), generator=g)
    for j, f in enumerate(freqs):
        on = torch.randperm(n, generator=g)[: round(f * n)]
        x[on, j] += 1.0
    return x


def _naive_fvu(x: torch.Tensor) -> float:
    x = x.double()
    x_hat = torch.relu(x - 0.5)  # the planted SAE's reconstruction
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.fixture
def drift_setup(tmp_path, saes, store_tools):
    # Latent j fires iff x_j > 0.5: its frequency is the planted one. Latent 0 vanishes, latent 3 appears.
    sae = saes.make(torch.eye(4), torch.full((4,), -0.5), torch.eye(4), torch.zeros(4))
    base_x = _planted(2000, [0.3, 0.1, 0.05, 0.0], seed=0)
    cmp_x = _planted(1500, [0.01, 0.1, 0.04, 0.2], seed=1)
    base = store_tools.write_store(tmp_path / "base", base_x)
    compare = store_tools.write_store(tmp_path / "ft", cmp_x)
    sae_dir = store_tools.save_sae(sae, tmp_path / "sae", hook="layers.0.resid_post")
    return sae_dir, base, compare, base_x, cmp_x


def test_run_eval_reports_both_stores_and_the_planted_drift(drift_setup):
    sae_dir, base, compare, base_x, cmp_x = drift_setup
    (r,) = run_eval(EvalConfig(saes=[sae_dir], activations=base, compare_activations=compare, batch_size=256))
    assert r["tokens"] == 2000 and r["compare.tokens"] == 1500
    assert r["fvu"] == pytest.approx(_naive_fvu(base_x), rel=1e-9)
    assert r["compare.fvu"] == pytest.approx(_naive_fvu(cmp_x), rel=1e-9)
    assert r["drift.fvu_change"] == pytest.approx(r["compare.fvu"] - r["fvu"], rel=1e-12)
    lat = r["drift"]["latents"]
    np.testing.assert_allclose(lat["freq_base"], (base_x > 0.5).double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(lat["freq_compare"], (cmp_x > 0.5).double().mean(0).numpy(), rtol=1e-12)
    assert list(lat["status"]) == ["vanished", "kept", "kept", "appeared"]
    assert r["drift.appeared_count"] == 1 and r["drift.vanished_count"] == 1
    assert r["drift.ce_loss_score_change"] is None


def _cli(*args):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_eval_cli_writes_drift_files(drift_setup, tmp_path):
    sae_dir, base, compare, _, _ = drift_setup
    out = tmp_path / "eval"
    proc = _cli(
        "eval", "--sae", sae_dir, "--activations", base, "--compare-activations", compare, "--out", out
    )
    assert proc.exit_code == 0, proc.output
    assert "1 latents appeared, 1 vanished" in " ".join(proc.output.split())  # rich wraps lines
    doc = json.loads((out / "sae" / "drift.json").read_text())
    assert [x["latent"] for x in doc["appeared"]] == [3] and [x["latent"] for x in doc["vanished"]] == [0]
    assert doc["summary"]["ratio"] == 10 and doc["compare_activations"] == str(compare)
    rows = list(csv.DictReader((out / "sae" / "drift.csv").open()))
    assert [row["status"] for row in rows] == ["vanished", "kept", "kept", "appeared"]
    assert float(rows[3]["freq_compare"]) == pytest.approx(0.2)
    assert (out / "sae" / "drift_frequency.png").stat().st_size > 1000
    metrics = json.loads((out / "sae" / "metrics.json").read_text())
    assert metrics["drift.vanished_count"] == 1 and "compare.fvu" in metrics
    strict = _cli(
        "eval",
        "--sae",
        sae_dir,
        "--activations",
        base,
        "--compare-activations",
        compare,
        "--drift-ratio",
        "100",
        "--out",
        tmp_path / "strict",
    )
    assert strict.exit_code == 0 and "1 latents appeared, 0 vanished" in " ".join(strict.output.split())


def test_drift_config_needs_both_models_or_neither(tmp_path):
    with pytest.raises(ValueError, match="give both --model"):
        EvalConfig(saes=[tmp_path], activations=tmp_path, compare_activations=tmp_path, model=tmp_path)
    with pytest.raises(ValueError, match="--compare-activations STORE too"):
        EvalConfig(saes=[tmp_path], activations=tmp_path, compare_model=tmp_path)
    with pytest.raises(ValueError, match="drift_ratio"):
        EvalConfig(saes=[tmp_path], activations=tmp_path, compare_activations=tmp_path, drift_ratio=1)


def test_spliced_ce_on_both_models_equals_separate_evaluations(tiny_pair, tmp_path, saes, store_tools):
    from saeforge.activations import CaptureConfig, capture

    base_model, ft_model = tiny_pair
    hook = "layers.1.resid_post"
    cfg = CaptureConfig(
        model=str(base_model),
        finetuned_model=str(ft_model),
        hooks=[hook],
        data="builtin:heldout",
        tokens=400,
        out=tmp_path / "acts",
        context_size=32,
        shard_tokens=256,
        batch_size=4,
    )
    dirs = capture(cfg)
    sae_dir = store_tools.save_sae(saes.random(64, 128, seed=2), tmp_path / "sae", hook=hook)
    common = dict(saes=[sae_dir], contexts=6, batch_size=200)
    (r,) = run_eval(
        EvalConfig(
            activations=dirs[f"base/{hook}"],
            model=base_model,
            compare_activations=dirs[f"finetuned/{hook}"],
            compare_model=ft_model,
            **common,
        )
    )
    (base_only,) = run_eval(EvalConfig(activations=dirs[f"base/{hook}"], model=base_model, **common))
    (ft_only,) = run_eval(EvalConfig(activations=dirs[f"finetuned/{hook}"], model=ft_model, **common))
    for key in ("fvu", "ce_loss_score", "kl_div_score", "ce_loss_with_sae"):
        assert r[key] == pytest.approx(base_only[key], rel=1e-9)
        assert r[f"compare.{key}"] == pytest.approx(ft_only[key], rel=1e-9)
    assert r["compare.ce_loss_clean"] != pytest.approx(r["ce_loss_clean"])
    assert r["drift.ce_loss_score_change"] == pytest.approx(
        ft_only["ce_loss_score"] - base_only["ce_loss_score"]
    )
