"""What the server knows about one request, and the audit record made from it."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class RequestContext:
    endpoint: str
    method: str
    request_id: str = field(default_factory=lambda: "req-" + uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    key_id: str | None = None
    model: str | None = None
    variant: str | None = None
    steering: dict[str, Any] | None = None
    prompt: str | list[str] | None = None
    completions: list[str] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    features: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    stream: bool = False
    committed: bool = False
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def record(self, text_mode: str, model_fingerprint: str, saes: list[dict[str, str]]) -> dict[str, Any]:
        """The audit record (without seq/prev/hash). text_mode: full | hash | none."""
        rec: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started))
            + f".{int(self.started * 1000) % 1000:03d}Z",
            "request_id": self.request_id,
            "key_id": self.key_id,
            "endpoint": self.endpoint,
            "method": self.method,
            "model": self.model,
            "variant": self.variant,
            "model_fingerprint": model_fingerprint,
            "saes": saes,
            "steering": self.steering,
            "stream": self.stream,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "features": self.features,
            "latency_ms": round((time.time() - self.started) * 1000, 3),
            "status": self.status,
            "error": self.error,
        }
        if text_mode == "full":
            rec["prompt"], rec["completion"] = self.prompt, self.completions
        elif text_mode == "hash":
            prompts = self.prompt if isinstance(self.prompt, list) else None
            rec["prompt_sha256"] = (
                [_sha(p) for p in prompts]
                if prompts is not None
                else (_sha(self.prompt) if self.prompt is not None else None)
            )
            rec["completion_sha256"] = (
                [_sha(c) for c in self.completions] if self.completions is not None else None
            )
        return rec
