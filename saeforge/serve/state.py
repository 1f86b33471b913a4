"""Everything a running server holds: the backend and its batcher, SAEs, variants, keys, limits, the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saeforge.serve.audit import AuditLog
from saeforge.serve.auth import APIKeys
from saeforge.serve.backend import Backend
from saeforge.serve.batcher import Batcher
from saeforge.serve.config import ServeConfig
from saeforge.serve.saes import Edits, RequestError, ServedSAE


@dataclass
class ServerState:
    model_name: str
    backend: Backend
    batcher: Batcher
    limits: ServeConfig  # the bounds on every request: max_body_bytes, max_tokens, ...
    saes: dict[str, ServedSAE] = field(default_factory=dict)
    variants: dict[str, Edits] = field(default_factory=dict)
    keys: APIKeys | None = None
    audit: AuditLog | None = None
    audit_text: str = "full"
    audit_features: int = 10
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
