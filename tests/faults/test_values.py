"""Absurd values are caught, not averaged away: capture drops outlier rows by default (counted in the
manifest), training refuses rows that are NaN/inf or overflow float32 naming shard and row, and metrics of
degenerate data are undefined (null), never 0.0."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations import ActivationStore, CaptureConfig, capture
from saeforge.activations.manifest import MANIFEST, Manifest, shards_digest
from saeforge.activations.shards import sha256_file, write_shard
from saeforge.activations.stats import centred_sum_sq, unusable_rows
from saeforge.activations.writer import write_store
from saeforge.eval import EvalConfig, run_eval
from saeforge.train import ConfigError, NonFiniteError, TrainConfig, train
from saeforge.train.metrics import reduce_sums


def _train_cfg(store, out, tokens=4096, batch_size=256, **kw):
    sae = {"name": "t", "architecture": "topk", "k": 4, "d_sae": 32}
    return TrainConfig(activations=store, tokens=tokens, batch_size=batch_size, out=out, saes=[sae], **kw)


def test_unusable_rows_match_a_float64_reference():
    x = torch.randn(6, 16)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3] = 1e19  # each value finite, ||x||^2 = 1.6e39 > float32 max
    x[4] = 4e18  # ||x||^2 = 2.6e38: still representable
    ref = ~torch.isfinite(x.double()) | (
        x.double().pow(2).sum(-1, keepdim=True) > torch.finfo(torch.float32).max
    )
    assert unusable_rows(x).tolist() == ref.any(-1).tolist() == [False, True, True, True, False, False]


def test_issue_example_one_row_of_1e30_among_4096_is_refused_before_training(tmp_path):
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    x[1234] = 1e30
    write_store(tmp_path / "bad", x, shard_rows=1024)
    with pytest.raises(ConfigError, match=r"shard-000-000001\.safetensors row 210\b.*--drop-outliers"):
        train(_train_cfg(tmp_path / "bad", tmp_path / "t"))
    assert not (tmp_path / "t" / "t").exists()


def test_a_row_overflowing_float32_in_a_batch_is_named_by_shard_and_row(tmp_path):
    """The statistics were computed on clean rows (so the scale is sane); the overflowing row is found in the
    batch that holds it, before any weight is updated with it."""
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    write_store(tmp_path / "acts", x, shard_rows=256)
    shard = tmp_path / "acts" / "shard-000-000001.safetensors"
    y = x[256:].clone()
    y[77] = 1e20  # finite values, squared norm 1.6e41
    write_shard(shard, {"activations": y})
    m = json.loads((tmp_path / "acts" / MANIFEST).read_text())
    m["shards"][1]["sha256"] = sha256_file(shard)
    m["shards_digest"] = shards_digest(Manifest.model_validate(m).shards)
    (tmp_path / "acts" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(
        NonFiniteError, match=r"shard-000-000001\.safetensors rows \[77\] \(finite values whose"
    ):
        train(_train_cfg(tmp_path / "acts", tmp_path / "t", 512, 128, normalize_activations="none"))


def _capture_cfg(model, out, **kw):
    return CaptureConfig(
        model=str(model), hooks=["layers.1.resid_post"], data="builtin", tokens=256, out=out,
        context_size=32, shard_tokens=128, batch_size=4, **kw,
    )  # fmt: skip


@pytest.fixture
def planted(monkeypatch):
    """Makes the model's activation at (sequence 1, position 5) of the first forward batch 1e30."""
    import saeforge.models

    real = saeforge.models.run_hooks
    calls = []

    def poisoned(loaded, ids, mask, hooks):
        out = real(loaded, ids, mask, hooks)
        if not calls:
            out[hooks[0]][1, 5] = 1e30
        calls.append(1)
        return out

    monkeypatch.setattr(saeforge.models, "run_hooks", poisoned)


def test_capture_drops_an_outlier_row_by_default_and_counts_it(tiny_model, tmp_path, planted):
    cfg = _capture_cfg(tiny_model("gpt2"), tmp_path / "on")
    assert cfg.outlier_factor == 1000.0
    store = ActivationStore.open(capture(cfg)["layers.1.resid_post"])
    assert store.manifest.tokens.outliers_dropped == 1 and store.num_rows == 255
    assert store.manifest.outlier_threshold == 1000.0
    pos = torch.cat([store.shard(i)["positions"] for i in range(store.num_shards)])
    assert not ((pos[:, 0] == 1) & (pos[:, 1] == 5)).any()
    assert float(torch.cat(list(store.iter_batches(256))).abs().max()) < 1e3


def test_capture_with_the_filter_off_keeps_it_and_training_refuses_the_store(tiny_model, tmp_path, planted):
    cfg = _capture_cfg(tiny_model("gpt2"), tmp_path / "off", drop_outliers=0)
    assert cfg.outlier_factor is None
    d = capture(cfg)["layers.1.resid_post"]
    store = ActivationStore.open(d)
    assert store.manifest.tokens.outliers_dropped == 0 and store.num_rows == 256
    with pytest.raises(ConfigError, match=r"shard-000-000000\.safetensors row \d+"):
        train(_train_cfg(d, tmp_path / "t", tokens=256, batch_size=128))


def test_drop_outliers_is_off_or_above_one():
    with pytest.raises(ValueError, match="drop_outliers must be 0 \\(off\\) or above 1"):
        _capture_cfg("m", "o", drop_outliers=0.5)


def test_fvu_of_degenerate_data_is_undefined_not_zero(tmp_path, store_tools, saes):
    assert centred_sum_sq(4.0, 4.0, 1) is None  # one row
    assert centred_sum_sq(12.0, 36.0, 3) is None  # three equal rows x = (2): no variance
    assert centred_sum_sq(5.0, 9.0, 2) == pytest.approx(0.5)  # rows 1, 2: (1-1.5)^2 + (2-1.5)^2
    # training's record: a constant input makes FVU undefined even though the SSE is 0
    x = torch.full((8, 4), 3.0, dtype=torch.float64)
    inputs = {"sum": x.sum(0), "sum_sq": x.pow(2).sum(), "rows": torch.tensor(8.0, dtype=torch.float64)}
    acc = {
        k: torch.tensor(v, dtype=torch.float64)
        for k, v in {"steps": 1, "sse": 0.0, "l0": 2, "loss": 0}.items()
    }
    (m,) = reduce_sums(inputs, [acc], lambda t: t)
    assert m["fvu"] is None and m["l0"] == 2
    # eval on a store of one repeated row: metrics.json holds null, the table an undefined marker
    store = store_tools.write_store(tmp_path / "const", torch.ones(64, 8))
    sae = store_tools.save_sae(saes.random(8, 16), tmp_path / "sae")
    (result,) = run_eval(EvalConfig(saes=[sae], activations=store, compat="saelens"))
    assert result["fvu"] is None and result["explained_variance"] is None
    assert (
        result["saelens.explained_variance"] is None and result["saelens.explained_variance_legacy"] is None
    )
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    shown = CliRunner().invoke(
        app, ["eval", "--sae", str(sae), "--activations", str(store), "--out", str(tmp_path / "e")]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads((tmp_path / "e" / "sae" / "metrics.json").read_text())["fvu"] is None
