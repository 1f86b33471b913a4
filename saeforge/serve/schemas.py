"""Request bodies of the OpenAI endpoints and the `saeforge` extension object, validated once at the edge.

Fields the OpenAI API has but this server does not implement (logprobs, tools, ...) are refused with a 400 when
set, rather than silently ignored; unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saeforge.serve.saes import Clamp, Edits, RequestError, ServedSAE, Steer, check_latent, resolve_sae

UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "suffix",
    "best_of",
    "logit_bias",
)


class SteerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sae: str | None = None
    latent: int
    coefficient: float


class ClampSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sae: str | None = None
    latent: int
    value: float


class ReturnFeatures(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = Field(default=10, ge=1, le=100)
    per_token: bool = False


class Extension(BaseModel):
    """`{"saeforge": {"steer": [...], "clamp": [...], "return_features": {"top": 10}}}`."""

    model_config = ConfigDict(extra="forbid")
    steer: list[SteerSpec] = Field(default_factory=list, max_length=64)
    clamp: list[ClampSpec] = Field(default_factory=list, max_length=64)
    return_features: ReturnFeatures | None = None


def to_edits(
    ext: Extension, saes: dict[str, ServedSAE], max_coefficient: float, where: str = "saeforge"
) -> Edits:
    """Resolves SAE names and checks latent ids and magnitudes; RequestError (400) naming the bad entry."""
    steer, clamp = [], []
    for i, s in enumerate(ext.steer):
        param = f"{where}.steer[{i}]"
        served = resolve_sae(saes, s.sae, param)
        check_latent(served, s.latent, param)
        if not abs(s.coefficient) <= max_coefficient:
            raise RequestError(
                f"{param}.coefficient {s.coefficient} exceeds the server's limit |coefficient| <= {max_coefficient:g}",
                param=f"{param}.coefficient",
            )
        steer.append(Steer(served.name, s.latent, float(s.coefficient)))
    for i, c in enumerate(ext.clamp):
        param = f"{where}.clamp[{i}]"
        served = resolve_sae(saes, c.sae, param)
        check_latent(served, c.latent, param)
        if not abs(c.value) <= max_coefficient:
            raise RequestError(
                f"{param}.value {c.value} exceeds the server's limit |value| <= {max_coefficient:g}",
                param=f"{param}.value",
            )
        clamp.append(Clamp(served.name, c.latent, float(c.value)))
    return Edits(tuple(steer), tuple(clamp))


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    saeforge: Extension | None = None

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise RequestError("stop: at most 4 stop sequences", param="stop")
        return tuple(stop)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validates a JSON body; RequestError naming the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False):
            raise RequestError(f"{name} is not supported by this server", param=name)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RequestError(f"{loc}: {first['msg']}", param=loc) from None


def load_variants(path: Path, saes: dict[str, ServedSAE], max_coefficient: float) -> dict[str, Edits]:
    """A variants file (YAML or JSON): `NAME: {steer: [...], clamp: [...]}` per variant -> {NAME: Edits}."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"variants file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"variants file {path}: expected a mapping NAME -> {{steer: [...], clamp: [...]}}")
    variants = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or ":" in name or not name:
            raise ValueError(
                f"variants file {path}: variant name {name!r} must be a non-empty string without ':'"
            )
        try:
            ext = Extension.model_validate(spec or {})
            if ext.return_features is not None:
                raise ValueError("return_features belongs in a request, not in a variant")
            variants[name] = to_edits(ext, saes, max_coefficient, where=f"variant {name!r}")
        except (ValidationError, ValueError) as e:
            where = "" if isinstance(e, RequestError) else f"variant {name!r}: "
            raise ValueError(f"variants file {path}: {where}{e}") from e
    return variants
