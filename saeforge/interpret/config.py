"""`InterpretConfig` (what `saeforge interpret` describes) and `AttributeConfig` (`saeforge attribute`).

Torch-free: the CLI builds its options from these fields and validates them before torch loads.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeforge.device import DEFAULT_DEVICE, Device


class InterpretConfig(BaseModel):
    """Which latents of an SAE to describe, from which store, how many contexts of each kind, and the judge."""

    model_config = ConfigDict(extra="forbid")

    sae: Path = Field(description="SAE directory (cfg.json + sae_weights.safetensors)")
    activations: Path = Field(
        description="activation store captured at the SAE's hook (with token ids and positions)"
    )
    out: Path = Field(
        description="output directory: latents.json, index.html + latents/*.html, features.sqlite"
    )
    verify: bool = Field(
        default=True,
        description="check each shard's sha256 as it is first read; false (--no-verify) loads a store without "
        "checksums (another tool's) unverified, and latents.json records it",
    )
    latents: int | None = Field(
        default=None, gt=0, description="describe N latents drawn at random (see seed)"
    )
    latent_ids: list[int] | None = Field(
        default=None, description="describe these latents: comma-separated ids"
    )
    top_k: int = Field(default=20, gt=0, description="top activating contexts kept per latent")
    before: int = Field(default=12, ge=0, description="context tokens shown before the activating token")
    after: int = Field(default=4, ge=0, description="context tokens shown after the activating token")
    bands: int = Field(default=5, gt=0, description="activation-quantile bands sampled per latent")
    per_band: int = Field(default=4, gt=0, description="contexts sampled per quantile band")
    negatives: int = Field(default=10, ge=0, description="non-activating contexts kept per latent")
    batch_rows: int = Field(default=8192, gt=0, description="activation rows read from the store per step")
    model: Path | None = Field(
        default=None,
        description="local causal LM for promoted/suppressed tokens and token strings (default: the store's model)",
    )
    no_logits: bool = Field(default=False, description="skip the promoted/suppressed tokens")
    through_norm: bool = Field(
        default=True,
        description="read decoder directions through the final norm before the unembedding (docs/interpretation.md)",
    )
    judge_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint for explanations (e.g. http://host:8000/v1)"
    )
    judge_model: str | None = Field(default=None, description="model name the judge endpoint serves")
    judge_concurrency: int = Field(default=8, gt=0, description="parallel judge requests")
    judge_timeout: float = Field(default=60.0, gt=0, description="seconds per judge request")
    judge_retries: int = Field(default=4, ge=0, description="retries per judge request (backoff doubles)")
    judge_examples: int = Field(default=10, gt=0, description="top contexts shown to the explainer")
    device: Device = DEFAULT_DEVICE
    seed: int = Field(default=0, description="seed of the latent sample and the reservoirs")

    @model_validator(mode="after")
    def _check(self) -> InterpretConfig:
        if (self.latents is None) == (self.latent_ids is None):
            raise ValueError("give exactly one of --latents N or --latent-ids I,J,... (latents / latent_ids)")
        if (self.judge_url is None) != (self.judge_model is None):
            raise ValueError("--judge-url and --judge-model go together (judge_url / judge_model)")
        return self


class AttributeConfig(BaseModel):
    """Which target token's logit after which prompt to explain through an SAE's latents."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="local causal LM directory")
    sae: Path = Field(description="SAE directory (cfg.json + sae_weights.safetensors)")
    prompt: str = Field(description="prompt whose next-token logit is explained")
    target: str = Field(description="target token (a single token; mind the leading space)")
    top: int = Field(
        default=10, gt=0, description="latents shown that raise the logit most, and as many lowering it"
    )
    ablate: int = Field(
        default=5, ge=0, description="re-run the prompt without each of the N largest |direct|"
    )
    hook: str | None = Field(default=None, description="hook of the SAE (default: its hook_name)")
    out: Path | None = Field(
        default=None,
        description="an interpret out directory: adds this attribution to latents.json and its dashboard "
        "(any other directory gets attribution.json)",
    )
    device: Device = DEFAULT_DEVICE


def target_token_id(tokenizer, target: str) -> int:
    """The single token `target` encodes to; a clear error when it is several tokens."""
    ids = tokenizer.encode(target, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"--target {target!r} is {len(ids)} tokens {pieces}: give a single token (mind the leading space, "
            f"e.g. {' ' + target.strip()!r})"
        )
    return ids[0]
