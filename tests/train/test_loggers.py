"""Metric sinks, with the real TensorBoard, MLflow and W&B packages (offline): params, every step's metrics and the
artefacts arrive, and a run resumed after a crash appends to the same tracker runs without sending a step twice."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from _support import SyntheticSource

from saeforge.train import TrainConfig, train
from saeforge.train.loggers import TRACKERS_FILE

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboard")


def _wandb_records(path: Path) -> list[tuple[str, dict]]:
    """(kind, {key: value}) of the history records and the run record's config of one offline `.wandb` file,
    read from its layout: a 7-byte header (":W&B", magic, version), then LevelDB log records (crc32c u32,
    length u16, type u8: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each a serialised `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, parts, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            kind = record.WhichOneof("record_type")
            items = {"history": record.history.item, "run": record.run.config.update}.get(kind, [])
            rows.append((kind, {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}))
    return rows


def test_trackers_get_params_metrics_artefacts_and_a_resume_appends(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = TrainConfig.parse(
        dict(
            tokens=64 * 8,
            batch_size=64,
            out=str(run),
            log_every=2,
            checkpoint_every=4,
            device="cpu",
            loggers=["tensorboard", "mlflow", "wandb"],
            saes=[dict(name="tk", architecture="topk", k=4, d_sae=32)],
        )  # fmt: skip
    )

    def crash_at_6(event):  # after step 6 was logged everywhere, before its checkpoint: a crash
        if event.step == 6:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, source=SyntheticSource(16, 64), progress=crash_at_6)
    ids = json.loads((run / TRACKERS_FILE).read_text())
    train(cfg.model_copy(update={"resume": True}), source=SyntheticSource(16, 64))
    wandb.teardown()
    assert json.loads((run / TRACKERS_FILE).read_text()) == ids

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    fvu = {r["step"]: r["saes"]["tk"]["fvu"] for r in records}

    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "saeforge"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_id == ids["mlflow"]["run_id"] and mlrun.info.status == "FINISHED"
    assert json.loads(mlrun.data.params["batch_size"]) == 64
    history = client.get_metric_history(mlrun.info.run_id, "tk/fvu")
    assert sorted(m.step for m in history) == [2, 4, 6, 8]  # step 6 was not sent twice
    assert {m.step: m.value for m in history} == pytest.approx(fvu, rel=1e-6)
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"run_card.json", "curves.png", "tk"} <= names
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id, "tk")] == ["tk/README.md"]
    assert not (tmp_path / "mlruns").exists() and (run / "mlartifacts").is_dir()

    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith(ids["wandb"]["run_id"]) for d in offline)
    records = [r for d in offline for r in _wandb_records(next(d.glob("run-*.wandb")))]
    rows = [row for kind, row in records if kind == "history"]
    assert [row["_step"] for row in rows] == [2, 4, 6, 8]
    assert {row["_step"]: row["tk/fvu"] for row in rows} == pytest.approx(fvu, rel=1e-6)
    config = {k: v for kind, row in records if kind == "run" for k, v in row.items()}
    assert config["batch_size"] == 64
    saved = {p.relative_to(offline[1] / "files").as_posix() for p in (offline[1] / "files").rglob("*")}
    assert {"run_card.json", "curves.png", "tk/README.md"} <= saved

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("tk/fvu")] == [2, 4, 6, 8]
    assert [e.value for e in events.Scalars("tk/fvu")] == pytest.approx(
        [fvu[s] for s in (2, 4, 6, 8)], rel=1e-6
    )
    assert "curves.png" in events.Tags()["images"]
    assert {"config/text_summary", "run_card.json/text_summary"} <= set(events.Tags()["tensors"])
