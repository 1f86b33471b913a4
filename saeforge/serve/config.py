"""Every setting of `saeforge serve`: the command's options are this config's fields (defaults and help)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from saeforge.device import DEFAULT_DEVICE, Device, DeviceMap


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="local model directory")
    model_name: str | None = Field(
        default=None, description="model id clients use (default: the model directory's name)"
    )
    sae: list[Path] = Field(default_factory=list, description="SAE directories (repeatable)")
    index: list[str] = Field(
        default_factory=list,
        description="feature index folders: DIR (paired with --sae in order) or NAME=DIR",
    )
    variants: Path | None = Field(
        default=None, description="YAML/JSON file of named edits served as MODEL:NAME"
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port (0: any free port)")
    api_keys: Path | None = Field(default=None, description="file with one bearer API key per line")
    insecure_no_auth: bool = Field(
        default=False, description="allow a non-loopback --host without --api-keys"
    )
    audit_log: Path = Field(
        default=Path("audit"), description="audit log folder (with RUN_DIR: RUN_DIR/audit)"
    )
    audit_text: Literal["full", "hash", "none"] = Field(
        default="full", description="prompt/completion text in the audit log: full, hash (sha256) or none"
    )
    audit_features: int = Field(
        default=10, ge=0, le=100, description="top features per SAE recorded per request"
    )
    audit_max_bytes: int = Field(default=64 << 20, gt=0, description="rotate audit files past this size")
    audit_max_delay_ms: float = Field(
        default=5.0, ge=0, le=1000, description="group-commit window of the audit log"
    )
    device: Device = DEFAULT_DEVICE
    device_map: DeviceMap = None
    dtype: str = Field(default="float32", description="model dtype (float32, float16, bfloat16)")
    max_batch_size: int = Field(default=8, ge=1, le=256, description="sequences per generation batch")
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="largest request body (413 beyond)")
    max_prompt_tokens: int = Field(default=4096, gt=0, description="longest prompt (400 beyond)")
    max_tokens: int = Field(
        default=512, gt=0, description="largest max_tokens a request may ask (400 beyond)"
    )
    max_coefficient: float = Field(
        default=1000.0, gt=0, description="largest |coefficient| / |value| of an edit (400 beyond)"
    )
    max_concurrency: int = Field(
        default=64, gt=0, description="requests in flight (429 + Retry-After beyond)"
    )
    max_n: int = Field(default=8, gt=0, description="most sequences (prompts x n) per request")
    shutdown_timeout: float = Field(
        default=30.0, ge=0, description="seconds in-flight requests get after SIGTERM"
    )
