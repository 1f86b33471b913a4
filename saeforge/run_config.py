"""A `saeforge run` config: the YAML read, validated and resolved into the stage configs (capture, train, eval)
without importing torch, so that a typo fails in about a second, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saeforge.activations.config import CaptureConfig
from saeforge.errors import ConfigError, error_message, read_yaml_mapping
from saeforge.eval.config import EvalConfig
from saeforge.hook_names import canonical_hook_name
from saeforge.train.config import TrainConfig

BUILTIN_MODEL = "builtin"

# Fields the pipeline fills in itself; a section that sets them is told so.
_CAPTURE_OWN = {"model", "hooks", "data", "out"}
_TRAIN_OWN = {"activations", "out"}
_EVAL_OWN = {"saes", "activations", "out", "model", "data"}


class ReportSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latents: int = Field(default=16, ge=0, description="latents shown with their top-activating contexts")
    contexts_per_latent: int = Field(default=6, ge=1, description="contexts shown per latent")
    seed: int = Field(default=0, description="seed of the latent sample")


class RunConfig(BaseModel):
    """The run: model, corpora, hooks, and one section per stage."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="local model directory, or 'builtin' for the demo MiniLM")
    data: str | list[dict[str, Any]] = Field(
        description="training corpus SOURCE, or a mixture: [{source: S, weight: W}, ...]"
    )
    eval_data: str | None = Field(default=None, description="held-out corpus SOURCE (default: none)")
    hooks: list[str] = Field(min_length=1, description="hook names; one store and one set of SAEs per hook")
    out: Path = Field(default=Path("runs/run"), description="run directory")
    capture: dict[str, Any] = Field(default_factory=dict, description="CaptureConfig fields")
    eval_capture_tokens: int = Field(default=50_000, gt=0, description="held-out activation rows captured")
    train: dict[str, Any] = Field(description="TrainConfig fields (tokens, batch_size, saes, ...)")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig fields")
    report: ReportSection = Field(default_factory=ReportSection)

    @field_validator("hooks")
    @classmethod
    def _canonical_hooks(cls, v: list[str]) -> list[str]:
        return [canonical_hook_name(h) for h in v]

    @field_validator("capture", "train", "eval")
    @classmethod
    def _no_pipeline_fields(cls, v: dict[str, Any], info) -> dict[str, Any]:
        own = {"capture": _CAPTURE_OWN, "train": _TRAIN_OWN, "eval": _EVAL_OWN}[info.field_name]
        clash = sorted(own & set(v))
        if clash:
            raise ValueError(
                f"{info.field_name}.{clash[0]} is set by the pipeline from the top-level keys "
                f"(model, data, hooks, out): remove it from the {info.field_name} section"
            )
        return v


@dataclass
class StagePlan:
    """The run config resolved into the stage configs (validated)."""

    run: RunConfig
    model_dir: Path
    capture_train: CaptureConfig
    capture_heldout: CaptureConfig | None
    train: dict[str, TrainConfig]


def builtin_config_path() -> Path:
    return Path(str(resources.files("saeforge.examples").joinpath("minilm.yaml")))


def _err(e: ValidationError, section: str, model: type) -> ConfigError:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    where = f"{section}.{loc}" if section else loc
    return ConfigError(f"config field `{where}`: {error_message(first, model)}")


def read_run_config(path: str | Path | None = None, out: str | Path | None = None) -> RunConfig:
    """Reads and validates a run YAML (the built-in example when None) and applies `out`. Imports no torch."""
    src = Path(path) if path is not None else builtin_config_path()
    raw = read_yaml_mapping(src, "model, data, hooks, out, train, ...; see saeforge/examples")
    if out is not None:
        raw["out"] = str(out)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise _err(e, "", RunConfig) from e


def check_model_path(model: str) -> Path | None:
    """The model directory of a run (None for 'builtin', found and checked when the model loads)."""
    if model == BUILTIN_MODEL:
        return None
    p = Path(model).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"model: {model!r} is not a local directory. saeforge never downloads: give the path of a saved "
            "Hugging Face model (config.json + weights + tokenizer), or 'builtin' for the demo MiniLM"
        )
    return p


def resolve(run: RunConfig, model_dir: Path) -> StagePlan:
    """Builds (and so validates) every stage config of `run`; raises ConfigError naming the field."""
    out = Path(run.out)
    acts = out / "activations"
    if run.capture.get("finetuned_model") is not None:
        raise ConfigError(
            "capture.finetuned_model: `saeforge run` captures and trains on one model; capture a base and a "
            "fine-tune with `saeforge capture --model BASE --model FINETUNED` and compare them with `saeforge diff`"
        )
    try:
        cap = CaptureConfig(
            model=str(model_dir), hooks=run.hooks, data=run.data, out=acts / "train", **run.capture
        )
    except ValidationError as e:
        raise _err(e, "capture", CaptureConfig) from e
    heldout = None
    if run.eval_data is not None:
        held_opts = {**run.capture, "tokens": run.eval_capture_tokens}
        held_opts["shard_tokens"] = min(
            held_opts.get("shard_tokens", run.eval_capture_tokens), run.eval_capture_tokens
        )
        heldout = CaptureConfig(
            model=str(model_dir), hooks=run.hooks, data=run.eval_data, out=acts / "heldout", **held_opts
        )
    trains = {}
    for hook in run.hooks:
        try:
            trains[hook] = TrainConfig(
                activations=acts / "train" / hook,
                out=out / "saes" / hook,
                evaluation_datasets=[run.eval_data] if run.eval_data else [],
                **{"resume": True, **run.train},  # rerunning `saeforge run` continues where it stopped
            )
        except ValidationError as e:
            raise _err(e, "train", TrainConfig) from e
    try:
        EvalConfig(saes=[out], activations=out, **run.eval)
    except ValidationError as e:
        raise _err(e, "eval", EvalConfig) from e
    return StagePlan(run=run, model_dir=model_dir, capture_train=cap, capture_heldout=heldout, train=trains)
