"""Metric sinks. `metrics.jsonl` in the run directory always; TensorBoard, MLflow and Weights & Biases when chosen.
Their packages are imported only when chosen; `check_logger_packages` fails before training if one is missing.

A record is {"step", "tokens", "tokens_per_s", "elapsed_s", "saes": {name: {"loss", <loss terms>, "l0", "fvu",
"dead_fraction", "lr"}}}; the trackers receive it flattened as "<name>/<metric>" (undefined metrics, null in the
JSONL, are left out).

Where the trackers write, offline by default:
- TensorBoard: `<run>/tensorboard/`.
- MLflow: `$MLFLOW_TRACKING_URI` when set (a team server), else an sqlite store `<run>/mlflow.db` with artefacts
  under `<run>/mlartifacts/`.
- W&B: `<run>/wandb/`, in `$WANDB_MODE` when set, else offline (`wandb sync <run>/wandb/offline-run-*` uploads).

A resumed run appends to the same tracker runs: their ids are kept in `<run>/trackers.json`, and records the
trackers already received before the interruption (steps up to the last one in `metrics.jsonl` then) are not
sent twice. At the end the run card, the curves and each SAE's card are attached as artefacts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from saeforge.atomic import write_text
from saeforge.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
TRACKERS_FILE = "trackers.json"
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_logger_packages(loggers: list[str]) -> None:
    for name in loggers:
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"loggers: '{name}' needs the {package} package, which is not installed; "
                f"`pip install {package}` or remove '{name}' from loggers"
            )


def flatten(record: dict[str, Any]) -> dict[str, float]:
    flat = {k: float(v) for k, v in record.items() if k not in ("saes", "step") and v is not None}
    for name, metrics in record["saes"].items():
        flat.update({f"{name}/{k}": float(v) for k, v in metrics.items() if v is not None})
    return flat


def read_metrics(run_dir: Path, max_step: int | None = None) -> list[dict[str, Any]]:
    """Records of `metrics.jsonl` (those with step <= max_step when given); a torn last line is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or record["step"] <= max_step:
            records.append(record)
    return records


class _Mlflow:
    """One MLflow run through the client API (no global active run, so a caller's own MLflow run is untouched)."""

    def __init__(self, run_dir: Path, params: dict[str, Any], known: dict[str, str] | None):
        from mlflow.tracking import MlflowClient

        uri = (known or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        uri = uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        if known:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name("saeforge")
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(
                    "saeforge", artifact_location=(run_dir / "mlartifacts").resolve().as_uri()
                )
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            for key, value in params.items():
                self.client.log_param(self.run_id, key, json.dumps(value)[:6000])
        self.ids = {"run_id": self.run_id, "tracking_uri": uri}

    def log(self, flat: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in flat.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def attach(self, paths: list[tuple[Path, str]]) -> None:
        for path, folder in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class _Wandb:
    def __init__(self, run_dir: Path, params: dict[str, Any], project: str, known: dict[str, str] | None):
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        if known:
            self.run = wandb.init(
                project=known["project"], dir=str(run_dir), id=known["run_id"], resume="allow", mode=mode
            )
        else:
            self.run = wandb.init(
                project=project, dir=str(run_dir), config=params, name=run_dir.name, mode=mode
            )
        self.run_dir = run_dir
        self.ids = {"run_id": self.run.id, "project": known["project"] if known else project}

    def log(self, flat: dict[str, float], step: int) -> None:
        self.run.log(flat, step=step)

    def attach(self, paths: list[tuple[Path, str]]) -> None:
        for path, _ in paths:
            self.run.save(str(path.resolve()), base_path=str(self.run_dir.resolve()), policy="now")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class _TensorBoard:
    def __init__(self, run_dir: Path, params: dict[str, Any], resume_after: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(run_dir / "tensorboard"),
            purge_step=None if resume_after is None else resume_after + 1,
        )
        if resume_after is None:
            self.writer.add_text("config", "```\n" + json.dumps(params, indent=1) + "\n```", global_step=0)

    def log(self, flat: dict[str, float], step: int) -> None:
        for k, v in flat.items():
            self.writer.add_scalar(k, v, global_step=step)

    def attach(self, paths: list[tuple[Path, str]]) -> None:
        for path, folder in paths:
            tag = f"{folder}/{path.name}" if folder else path.name
            if path.suffix == ".png":
                from matplotlib.image import imread

                self.writer.add_image(tag, imread(path)[..., :3], dataformats="HWC")
            else:
                self.writer.add_text(tag, "```\n" + path.read_text() + "\n```")

    def close(self, status: str) -> None:
        self.writer.close()


class MetricLoggers:
    """Fans each record out to the chosen sinks. Only the main rank constructs one.

    resume_after: None for a fresh run; on resume, the last step the trackers received before the interruption
        (records up to it are not sent again, and the trackers' runs of `trackers.json` are continued).
    """

    def __init__(
        self,
        run_dir: Path,
        loggers: list[str],
        params: dict[str, Any],
        wandb_project: str,
        resume_after: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.resume_after = resume_after or 0
        known = self._known_ids() if resume_after is not None else {}
        self._jsonl = open(self.run_dir / METRICS_FILE, "a")
        self._trackers: dict[str, Any] = {}
        if "tensorboard" in loggers:
            self._trackers["tensorboard"] = _TensorBoard(self.run_dir, params, resume_after)
        if "mlflow" in loggers:
            self._trackers["mlflow"] = _Mlflow(self.run_dir, params, known.get("mlflow"))
        if "wandb" in loggers:
            self._trackers["wandb"] = _Wandb(self.run_dir, params, wandb_project, known.get("wandb"))
        ids = {name: t.ids for name, t in self._trackers.items() if hasattr(t, "ids")}
        if ids:
            write_text(self.run_dir / TRACKERS_FILE, json.dumps(ids, indent=1))

    def _known_ids(self) -> dict[str, dict[str, str]]:
        path = self.run_dir / TRACKERS_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); delete it to start new tracker runs") from e

    @staticmethod
    def truncate(run_dir: Path, max_step: int) -> list[dict[str, Any]]:
        """Drops records after `max_step` (written before a crash, replayed on resume); returns those kept."""
        kept = read_metrics(run_dir, max_step)
        path = Path(run_dir) / METRICS_FILE
        if path.exists():
            write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def log(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = record["step"]
        if not self._trackers or step <= self.resume_after:
            return
        flat = flatten(record)
        for tracker in self._trackers.values():
            tracker.log(flat, step)

    def attach(self, paths: list[tuple[Path, str]]) -> None:
        """Attaches files as artefacts: (path, folder in the tracker's artefact tree, "" for the top)."""
        existing = [(p, folder) for p, folder in paths if Path(p).is_file()]
        for tracker in self._trackers.values():
            tracker.attach(existing)

    def close(self, status: str = "FINISHED") -> None:
        """status: FINISHED, KILLED (interrupted, resumable) or FAILED."""
        self._jsonl.close()
        for tracker in self._trackers.values():
            tracker.close(status)
