"""Everything a running server holds: the backend and its batcher, SAEs, variants, keys, limits, the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saeforge.serve.audit import AuditLog
from saeforge.serve.auth import APIKeys
from saeforge.serve.backend import Backend
from saeforge.serve.batcher import Batcher
from saeforge.serve.saes import Edits, RequestError, ServedSAE


@dataclass
class Limits:
    """Bounds on every request (each a `saeforge serve` option of the same name)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 512
    max_coefficient: float = 1000.0
    max_concurrency: int = 64
    max_n: int = 8
    retry_after_s: int = 1


@dataclass
class ServerState:
    model_name: str
    backend: Backend
    batcher: Batcher
    saes: dict[str, ServedSAE] = field(default_factory=dict)
    variants: dict[str, Edits] = field(default_factory=dict)
    keys: APIKeys | None = None
    audit: AuditLog | None = None
    audit_text: str = "full"
    audit_features: int = 10
    limits: Limits = field(default_factory=Limits)
    model_dir: Path | None = None
    in_flight: int = 0

    def model_ids(self) -> list[str]:
        return [self.model_name] + [f"{self.model_name}:{v}" for v in self.variants]

    def resolve_model(self, model: str) -> tuple[str | None, Edits]:
        """A request's `model` -> (variant name or None, the variant's edits); 404 for an unknown id."""
        if model == self.model_name:
            return None, Edits()
        base, _, variant = model.partition(":")
        if base == self.model_name and variant in self.variants:
            return variant, self.variants[variant]
        raise RequestError(
            f"model {model!r} is not served here; served models: {self.model_ids()}",
            status=404,
            param="model",
        )

    def sae_records(self) -> list[dict[str, str]]:
        return [{"name": s.name, "sha256": s.sha256, "hook": s.hook} for s in self.saes.values()]
