"""Metric sinks. `metrics.jsonl` in the run directory always; TensorBoard, MLflow (sqlite backend) and
Weights & Biases (offline unless WANDB_MODE says otherwise) when chosen. Their packages are imported only when
chosen; `check_logger_packages` fails before training if one is missing.

A record is {"step", "tokens", "tokens_per_s", "elapsed_s", "saes": {name: {"loss", <loss terms>, "l0", "fvu",
"dead_fraction", "lr"}}}; the optional backends receive it flattened as "<name>/<metric>".
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from saeforge.atomic import write_text
from saeforge.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
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
    flat = {k: float(v) for k, v in record.items() if k not in ("saes", "step")}
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


class MetricLoggers:
    """Fans each record out to the chosen sinks. Only the main rank constructs one."""

    def __init__(self, run_dir: Path, loggers: list[str], params: dict[str, Any], wandb_project: str):
        self.run_dir = Path(run_dir)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a")
        self._tb = self._mlflow = self._wandb = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "mlflow" in loggers:
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment("saeforge")
            mlflow.start_run(run_name=self.run_dir.name)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self._mlflow = mlflow
        if "wandb" in loggers:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(
                project=wandb_project, dir=str(self.run_dir), config=params, name=self.run_dir.name
            )

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
        if self._tb is None and self._mlflow is None and self._wandb is None:
            return
        flat, step = flatten(record), record["step"]
        if self._tb is not None:
            for k, v in flat.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(flat, step=step)
        if self._wandb is not None:
            self._wandb.log(flat, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()
