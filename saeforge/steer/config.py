"""`SteerConfig`: what `saeforge steer` generates or exports. Torch-free, checked before torch loads."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeforge.device import DEFAULT_DEVICE, Device, DeviceMap


class SteerConfig(BaseModel):
    """Steer a causal LM along one latent's decoder direction (added, or clamped through the SAE), or export it."""

    model_config = ConfigDict(extra="forbid")

    sae: Path = Field(description="SAE directory (cfg.json + sae_weights.safetensors)")
    latent: int = Field(ge=0, description="latent whose decoder direction W_dec[latent] steers")
    model: Path | None = Field(default=None, description="local causal LM directory (needed to generate)")
    prompt: str | None = Field(default=None, description="prompt to continue (needed to generate)")
    coefficients: list[float] = Field(
        default_factory=list, description="add C * direction at the SAE's hook; one generation per C"
    )
    clamp: float | None = Field(
        default=None,
        description="instead of adding, set the latent to this value through the SAE (keeps its error)",
    )
    max_new_tokens: int = Field(default=32, gt=0, description="tokens generated (greedy) per setting")
    normalize: bool = Field(default=False, description="use the unit-norm decoder direction")
    hook: str | None = Field(default=None, description="hook to steer at (default: the SAE's hook_name)")
    export: Path | None = Field(
        default=None, description="write the direction to DIR/latent_<i>.npy and .safetensors"
    )
    device: Device = DEFAULT_DEVICE
    device_map: DeviceMap = None

    @property
    def generating(self) -> bool:
        return self.model is not None or self.prompt is not None

    @model_validator(mode="after")
    def _check(self) -> SteerConfig:
        if self.generating and (self.model is None or self.prompt is None):
            raise ValueError("generating needs both --model and --prompt")
        if not self.generating and self.export is None:
            raise ValueError("nothing to do: give --model and --prompt to generate, or --export DIR")
        if self.generating and not self.coefficients and self.clamp is None:
            raise ValueError("give --coefficient C (repeatable), --sweep a,b,c or --clamp VALUE")
        if self.clamp is not None and self.coefficients:
            raise ValueError(
                "--clamp sets the latent through the SAE; do not combine it with --coefficient/--sweep"
            )
        return self
