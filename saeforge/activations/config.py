"""`CaptureConfig` (what `saeforge capture` runs) and `PlanConfig` (what `saeforge plan` estimates).

Torch-free: the CLI builds its options from these fields and validates them before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saeforge.device import DEFAULT_DEVICE, Device
from saeforge.dtypes import StorageDtype


class CorpusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a text SOURCE (see saeforge.text.read_texts)")
    weight: float = Field(default=1.0, gt=0, description="relative share of contexts drawn from this source")


class CaptureConfig(BaseModel):
    """Everything a capture needs; fields marked in `RESUME_FIELDS` must match to resume a partial store."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="local model directory (config.json, weights, tokenizer)")
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
    out: Path = Field(description="output directory; each hook's store goes to out/<hook>")
    context_size: int = Field(default=128, ge=2, description="tokens per packed context")
    dtype: StorageDtype = Field(default="float32", description="stored dtype of the activations")
    shard_tokens: int = Field(default=65536, gt=0, description="rows per shard file")
    batch_size: int = Field(default=8, gt=0, description="contexts per forward pass")
    prepend_bos: bool = Field(default=True, description="start every context with BOS")
    exclude_special: bool = Field(default=True, description="leave BOS/EOS/PAD/CLS/SEP positions out")
    drop_outliers: float | None = Field(
        default=None,
        gt=1,
        description="drop rows whose norm exceeds this multiple of their context's median norm",
    )
    seed: int = Field(default=0, description="seed of the corpus mixture draw")
    device: Device = DEFAULT_DEVICE
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
        if len(set(v)) != len(v):
            raise ValueError(f"hooks are repeated: {v}")
        for h in v:
            if "/" in h or h in ("", ".", ".."):
                raise ValueError(f"hook name {h!r} cannot name a directory (it may not contain '/')")
        return v

    def resume_key(self) -> dict:
        """The settings a store's content depends on (device and out do not count)."""
        return self.model_dump(mode="json", exclude={"out", "device"})


class PlanConfig(BaseModel):
    """A planned capture of `tokens` rows at `hook` and the training of one SAE on them."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="local model directory")
    hook: str = Field(description="hook name the SAE will read, e.g. layers.3.resid_post")
    tokens: int = Field(gt=0, description="tokens to capture and train on")
    dtype: StorageDtype = Field(default="float32", description="stored dtype of the activations")
    expansion_factor: float = Field(default=16.0, gt=0, description="d_sae / d_in of the planned SAE")
    context_size: int = Field(default=128, ge=2, description="tokens per context of the timed forward pass")
    batch_size: int = Field(default=8, gt=0, description="contexts per timed forward pass")
    out: Path | None = Field(
        default=None, description="where the store would go (to compare with free disk space)"
    )
    device: Device = DEFAULT_DEVICE
