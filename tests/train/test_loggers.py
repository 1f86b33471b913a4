"""Metric sinks: TensorBoard for real (when installed); the MLflow and W&B adapters against recording stand-ins."""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types

import pytest
from _support import SyntheticSource

from saeforge.train import TrainConfig, train


def _recorder(name: str, calls: list) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def record(fn):
        return lambda *a, **kw: calls.append((fn, a, kw)) or module

    for fn in ("set_tracking_uri", "set_experiment", "start_run", "log_params", "log_metrics", "end_run", "init",
               "log", "finish"):  # fmt: skip
        setattr(module, fn, record(fn))
    return module


def test_every_chosen_sink_gets_every_record(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls: list = []
    monkeypatch.setitem(sys.modules, "mlflow", _recorder("mlflow", calls))
    monkeypatch.setitem(sys.modules, "wandb", _recorder("wandb", calls))
    monkeypatch.setenv("WANDB_MODE", "unset")  # records the original state for undo
    monkeypatch.delenv("WANDB_MODE")
    cfg = TrainConfig.parse(
        dict(
            tokens=64 * 6,
            batch_size=64,
            out=str(tmp_path / "run"),
            log_every=2,
            device="cpu",
            plots=False,
            loggers=["tensorboard", "mlflow", "wandb"],
            saes=[dict(name="tk", architecture="topk", k=4, d_sae=32)],
        )  # fmt: skip
    )
    train(cfg, source=SyntheticSource(16, 64))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]  # jsonl is always on

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    fvu = events.Scalars("tk/fvu")
    assert [e.step for e in fvu] == [2, 4, 6]
    assert [e.value for e in fvu] == pytest.approx([r["saes"]["tk"]["fvu"] for r in records], rel=1e-6)

    by_fn = {}
    for fn, a, kw in calls:
        by_fn.setdefault(fn, []).append((a, kw))
    assert by_fn["set_tracking_uri"][0][0][0] == f"sqlite:///{(run / 'mlflow.db').resolve()}"
    assert [kw["step"] for _, kw in by_fn["log_metrics"]] == [2, 4, 6]
    assert by_fn["log_metrics"][-1][0][0]["tk/l0"] == pytest.approx(records[-1]["saes"]["tk"]["l0"])
    assert "end_run" in by_fn and "finish" in by_fn
    assert by_fn["init"][0][1]["dir"] == str(run)
    assert [kw["step"] for _, kw in by_fn["log"]] == [2, 4, 6]
    assert os.environ["WANDB_MODE"] == "offline"
