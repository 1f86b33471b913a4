"""`CaptureConfig` (what `saeforge capture` runs) and `PlanConfig` (what `saeforge plan` estimates).

Torch-free: the CLI builds its options from these fields and validates them before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saeforge.device import DEFAULT_DEVICE, Device, DeviceMap
from saeforge.dtypes import StorageDtype
from saeforge.hook_names import canonical_hook_name

# The two models of a paired capture, in --model order; their stores go to out/<role>/<hook>.
ROLES = ("base", "finetuned")

# Default outlier filter: a row whose norm exceeds this multiple of its context's median norm is dropped. Loose on
# purpose: meant to keep the large-norm rows of attention-sink tokens ("massive activations", Sun et al. 2024)
# and drop rows of overflowed or corrupted values (1e30 among rows of norm ~10). See docs/formats.md.
OUTLIER_FACTOR = 1000.0


class CorpusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a text SOURCE (see saeforge.text.read_texts)")
    weight: float = Field(default=1.0, gt=0, description="relative share of contexts drawn from this source")


class CaptureConfig(BaseModel):
    """Everything a capture needs; fields marked in `RESUME_FIELDS` must match to resume a partial store."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="local model directory (config.json, weights, tokenizer); the base model of a paired capture"
    )
    finetuned_model: str | None = Field(
        default=None,
        description="paired capture: a fine-tuned model run over the same contexts as `model` (on the command "
        "line a second --model); stores go to out/base/<hook> and out/finetuned/<hook>",
    )
    hooks: list[str] = Field(
        min_length=1,
        description="hook names, e.g. layers.3.resid_post or a module path; one store per hook at out/<hook>",
    )
    data: list[CorpusSource] = Field(
        min_length=1,
        description="text SOURCEs (.txt, .jsonl, .parquet, a datasets directory or builtin), mixed by weight",
    )
    tokens: int = Field(
        gt=0, description="non-special corpus tokens to capture (rows per store before outlier dropping)"
    )
    out: Path = Field(
        description="output directory; each hook's store goes to out/<hook> (paired capture: out/<role>/<hook>)"
    )
    context_size: int = Field(default=128, ge=2, description="tokens per packed context")
    dtype: StorageDtype = Field(default="float32", description="stored dtype of the activations")
    shard_tokens: int = Field(default=65536, gt=0, description="rows per shard file")
    batch_size: int = Field(default=8, gt=0, description="contexts per forward pass")
    prepend_bos: bool = Field(default=True, description="start every context with BOS")
    exclude_special: bool = Field(default=True, description="leave BOS/EOS/PAD/CLS/SEP positions out")
    drop_outliers: float | None = Field(
        default=None,
        ge=0,
        description=f"drop rows whose norm exceeds this multiple of their context's median norm; 0 turns the "
        f"filter off. Default: {OUTLIER_FACTOR:g} for a single model, off for a paired capture",
    )
    seed: int = Field(default=0, description="seed of the corpus mixture draw")
    device: Device = DEFAULT_DEVICE
    device_map: DeviceMap = None
    model_dtype: StorageDtype = Field(default="float32", description="dtype the model runs in")

    @field_validator("data", mode="before")
    @classmethod
    def _sources(cls, v):
        if isinstance(v, str):
            return [{"source": v}]
        return [{"source": s} if isinstance(s, str) else s for s in v]

    @field_validator("hooks")
    @classmethod
    def _hook_names(cls, v: list[str]) -> list[str]:
        v = [canonical_hook_name(h) for h in v]
        if len(set(v)) != len(v):
            raise ValueError(f"hooks are repeated: {v}")
        for h in v:
            if "/" in h or h in ("", ".", ".."):
                raise ValueError(f"hook name {h!r} cannot name a directory (it may not contain '/')")
        return v

    @field_validator("drop_outliers")
    @classmethod
    def _factor(cls, v: float | None) -> float | None:
        if v is not None and 0 < v <= 1:
            raise ValueError(
                f"drop_outliers must be 0 (off) or above 1, got {v:g} (it would drop typical rows)"
            )
        return v

    @property
    def outlier_factor(self) -> float | None:
        """The outlier filter's factor in effect (None: off): `drop_outliers`, or by default OUTLIER_FACTOR for a
        single model and off for a paired capture (each model would drop other rows)."""
        if self.drop_outliers is None:
            return OUTLIER_FACTOR if self.finetuned_model is None else None
        return self.drop_outliers or None

    @model_validator(mode="after")
    def _paired_rows_stay_aligned(self) -> CaptureConfig:
        if self.finetuned_model is not None and self.drop_outliers:
            raise ValueError(
                "drop_outliers cannot be used in a paired capture (two --model): each model would drop other "
                "rows and the stores would no longer be aligned; leave --drop-outliers out (it is off by default there)"
            )
        return self

    def models(self) -> list[tuple[str | None, str]]:
        """[(role, model directory)]: [(None, model)], or [("base", model), ("finetuned", finetuned_model)]."""
        if self.finetuned_model is None:
            return [(None, self.model)]
        return list(zip(ROLES, (self.model, self.finetuned_model), strict=True))

    def store_dirs(self) -> dict[str, Path]:
        """{store name: directory}: {hook: out/<hook>}, or for a paired capture {role/hook: out/role/hook}."""
        return {
            hook if role is None else f"{role}/{hook}": Path(self.out) / (role or "") / hook
            for role, _ in self.models()
            for hook in self.hooks
        }

    def resume_key(self) -> dict:
        """The settings a store's content depends on (device, device_map and out do not count; the outlier
        filter as in effect, so a store captured before it was on by default resumes only with
        `--drop-outliers 0`)."""
        key = self.model_dump(mode="json", exclude={"out", "device", "device_map"})
        key["drop_outliers"] = self.outlier_factor
        return key


class PlanConfig(BaseModel):
    """A planned capture of `tokens` rows at `hook` and the training of one SAE on them (without a model, only
    the layouts of `saeforge.plan.layouts` are planned, from the width given there)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="local model directory (times capture and a step here)"
    )
    hook: str | None = Field(
        default=None, description="hook name the SAE will read, e.g. layers.3.resid_post"
    )
    tokens: int = Field(gt=0, description="tokens to capture and train on")
    dtype: StorageDtype = Field(default="float32", description="stored dtype of the activations")
    expansion_factor: float = Field(default=16.0, gt=0, description="d_sae / d_in of the planned SAE")
    context_size: int = Field(default=128, ge=2, description="tokens per context of the timed forward pass")
    batch_size: int = Field(default=8, gt=0, description="contexts per timed forward pass")
    out: Path | None = Field(
        default=None, description="where the store would go (to compare with free disk space)"
    )
    device: Device = DEFAULT_DEVICE

    @model_validator(mode="after")
    def _model_and_hook(self) -> PlanConfig:
        if (self.model is None) != (self.hook is None):
            raise ValueError("give --model and --hook together (the hook is read from the model)")
        return self
