"""DiffConfig: what a model diff is, as one typed object (torch-free, so the CLI checks it before torch loads)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeforge.device import DEFAULT_DEVICE, Device
from saeforge.diff.categories import Thresholds


class DiffConfig(BaseModel):
    """One model diff. Paths are checked here; the stores' alignment when the run starts."""

    model_config = ConfigDict(extra="forbid")

    base_activations: Path = Field(description="store of the base model at the hook")
    finetuned_activations: Path = Field(
        description="store of the fine-tuned model, captured with the base one"
    )
    out: Path = Field(description="output directory: diff.json, latents.csv, diff_report.html")
    crosscoder: Path | None = Field(default=None, description="a trained two-site crosscoder (skip training)")
    k: int = Field(default=32, gt=0, description="BatchTopK: active latents per token on average")
    expansion_factor: float | None = Field(default=None, gt=0, description="d_sae = expansion_factor * d_in")
    d_sae: int | None = Field(default=None, gt=0, description="number of latents")
    tokens: int | None = Field(
        default=None, gt=0, description="training tokens (default: 2 epochs of the store)"
    )
    train_batch_size: int = Field(default=4096, gt=0, description="crosscoder training batch size (rows)")
    seed: int = Field(default=0, description="crosscoder initialisation and data order")
    rows: int | None = Field(
        default=None, gt=0, description="rows read for the per-latent table (default: all)"
    )
    thresholds: Thresholds = Field(default_factory=Thresholds, description="category thresholds")
    top: int = Field(default=10, ge=0, description="fine-tune-only and base-only latents shown in the report")
    contexts: int = Field(default=8, gt=0, description="top contexts per shown latent")
    judge_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint explaining the shown latents"
    )
    judge_model: str | None = Field(default=None, description="model name the judge endpoint serves")
    judge_api_key: str | None = Field(default=None, description="judge key (the CLI reads OPENAI_API_KEY)")
    base_model: Path | None = Field(default=None, description="base causal LM, for the causal check")
    finetuned_model: Path | None = Field(
        default=None, description="fine-tuned causal LM, for the causal check"
    )
    data: str | None = Field(
        default=None, description="text SOURCE of the causal check's contexts (default: the store's corpus)"
    )
    causal_contexts: int = Field(default=32, gt=0, description="contexts the causal check scores")
    context_size: int | None = Field(
        default=None, gt=1, description="tokens per causal-check context (default: the store's context size)"
    )
    controls: int = Field(default=3, ge=1, description="random latent sets in the causal control")
    device: Device = DEFAULT_DEVICE

    @model_validator(mode="after")
    def _check(self) -> DiffConfig:
        for name in ("base_activations", "finetuned_activations"):
            if not getattr(self, name).exists():
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} does not exist")
        if self.crosscoder is not None and not self.crosscoder.is_dir():
            raise ValueError(f"--crosscoder {self.crosscoder} is not a directory")
        if self.expansion_factor is not None and self.d_sae is not None:
            raise ValueError("give --expansion-factor or --d-sae, not both")
        if (self.base_model is None) != (self.finetuned_model is None):
            raise ValueError("the causal check needs both --base-model and --finetuned-model")
        if self.data is not None and self.base_model is None:
            raise ValueError("--data is for the causal check: give --base-model and --finetuned-model too")
        if (self.judge_url is None) != (self.judge_model is None):
            raise ValueError("--judge-url and --judge-model go together")
        return self
