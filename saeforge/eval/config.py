"""`EvalConfig`: what `saeforge eval` evaluates and on what. Torch-free, so flags are checked before torch loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saeforge.device import DEFAULT_DEVICE, Device, DeviceMap

# Largest d_sae for which stability across seeds runs the Hungarian match (O(d_sae^3)).
HUNGARIAN_MAX_LATENTS = 8192
# Latent drift between two stores (saeforge.eval.drift): a frequency change by this factor, above this floor.
DRIFT_RATIO = 10.0
DRIFT_MIN_FREQUENCY = 1e-4


class EvalConfig(BaseModel):
    """What to evaluate and on what. Paths are local; SOURCE is a corpus as `saeforge.text.read_texts` reads."""

    model_config = ConfigDict(extra="forbid")

    saes: list[Path] = Field(
        min_length=1,
        description="SAE directory (cfg.json + sae_weights.safetensors); repeat to compare several",
    )
    activations: list[Path] = Field(
        min_length=1,
        description="held-out activation store captured at the SAEs' hook (saeforge capture); for a crosscoder, "
        "one store per site, in its sites' order (repeat the flag), captured together",
    )
    target_activations: Path | None = Field(
        default=None,
        description="for a transcoder: the store of the site it writes, captured together with activations "
        "(its FVU is measured against this)",
    )
    verify: bool = Field(
        default=True,
        description="check each shard's sha256 as it is first read; false (--no-verify) loads a store without "
        "checksums (another tool's) unverified, and metrics.json records it",
    )
    out: Path | None = Field(
        default=None, description="output directory: out/<sae name>/metrics.json, comparison.csv/.json, plots"
    )
    model: Path | None = Field(
        default=None,
        description="local model directory; enables CE/KL scores (causal) or pooled cosine (encoder)",
    )
    data: str | None = Field(
        default=None,
        description="text SOURCE for downstream contexts (.txt, .jsonl, .parquet, datasets dir, builtin:heldout); default: the contexts kept in the store, else its corpus",
    )
    extra_data: list[str] = Field(
        default_factory=list,
        description="out-of-sample text SOURCEs, evaluated through the model (keys extra.<name>.*)",
    )
    tokens: int | None = Field(
        default=None, gt=0, description="activation rows to read from the store (default: all of them)"
    )
    batch_size: int = Field(default=4096, gt=0, description="activation rows per batch")
    contexts: int = Field(default=64, gt=0, description="token contexts per corpus for downstream metrics")
    context_size: int | None = Field(
        default=None, gt=1, description="tokens per context packed from data (default: the store's, else 128)"
    )
    downstream_batch_size: int = Field(default=8, gt=0, description="contexts per model forward pass")
    device: Device = DEFAULT_DEVICE
    device_map: DeviceMap = None
    hungarian_max_latents: int = Field(
        default=HUNGARIAN_MAX_LATENTS,
        gt=0,
        description="largest d_sae for which the Hungarian stability match across seeds is computed",
    )
    compare_activations: Path | None = Field(
        default=None,
        description="a second store at the same hook (e.g. the fine-tuned model's): adds its metrics (compare.*) "
        "and the per-latent drift between the stores, out/<sae name>/drift.json, drift.csv, drift_frequency.png",
    )
    compare_model: Path | None = Field(
        default=None,
        description="model of compare_activations (e.g. the fine-tuned model), for its CE/KL; needed with model",
    )
    drift_ratio: float = Field(
        default=DRIFT_RATIO,
        gt=1,
        description="frequency factor by which a latent counts as appeared or vanished",
    )
    drift_min_frequency: float = Field(
        default=DRIFT_MIN_FREQUENCY,
        gt=0,
        lt=1,
        description="a latent appears (vanishes) only if it fires on at least this fraction of the compare "
        "(base) tokens",
    )
    compat: str = Field(
        default="saeforge",
        description="saeforge, or saelens: also write SAELens/SAEBench definitions as saelens.* keys "
        "(docs/evaluation.md)",
    )

    @field_validator("activations", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("compat")
    @classmethod
    def _compat(cls, v: str) -> str:
        if v not in ("saeforge", "saelens"):
            raise ValueError(f"compat={v!r} is not one of saeforge, saelens")
        return v

    @model_validator(mode="after")
    def _model_for_corpora(self) -> EvalConfig:
        if self.model is None and (self.data or self.extra_data):
            raise ValueError(
                "data/extra_data are read with the model's tokenizer: give model (--model DIR) too"
            )
        if self.compare_model is not None and self.compare_activations is None:
            raise ValueError("compare_model scores compare_activations: give --compare-activations STORE too")
        if self.compare_activations is not None and (self.model is None) != (self.compare_model is None):
            raise ValueError(
                "with compare_activations, the downstream metrics are measured on both sides: give both --model "
                "(the base store's model) and --compare-model (the compare store's model), or neither"
            )
        return self
