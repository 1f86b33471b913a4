"""The SAEs a server steers with and reads features from, and the edits a request applies through them.

An edit is one of
- steer: x <- x + coefficient * W_dec[latent] at the SAE's hook (what `saeforge steer -c` does);
- clamp: latent `latent` reads `value`, keeping the SAE's error term: x <- x + (value - z_latent) * W_dec[latent]
  (what `saeforge steer --clamp` does; z is encoded from the activation entering the hook).
Within one SAE, clamps are computed from the incoming activation and steering is added after them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from saeforge.sae.base import SAE


class RequestError(ValueError):
    """A request the server refuses: HTTP `status`, OpenAI error `type`, and the offending `param`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind or {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            429: "rate_limit_error",
        }.get(status, "server_error")


@dataclass
class ServedSAE:
    """One SAE as served: its public `name`, the loaded SAE, the hook it reads, its weights' sha256 and labels."""

    name: str
    sae: SAE
    hook: str
    sha256: str
    path: Path
    index: Path | None = None
    labels: dict[int, str] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae


def sae_sha256(sae_dir: Path) -> str:
    """sha256 over the SAE directory's cfg.json and sae_weights.safetensors (name, then bytes, for each)."""
    digest = hashlib.sha256()
    for name in ("cfg.json", "sae_weights.safetensors"):
        digest.update(name.encode() + b"\0")
        with (Path(sae_dir) / name).open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Steer:
    sae: str
    latent: int
    coefficient: float


@dataclass(frozen=True)
class Clamp:
    sae: str
    latent: int
    value: float


@dataclass(frozen=True)
class Edits:
    """Every edit one generation applies (a variant's, then the request's own)."""

    steer: tuple[Steer, ...] = ()
    clamp: tuple[Clamp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.steer or self.clamp)

    def __add__(self, other: Edits) -> Edits:
        return Edits(self.steer + other.steer, self.clamp + other.clamp)

    def as_json(self) -> dict[str, list[dict]]:
        return {
            "steer": [{"sae": s.sae, "latent": s.latent, "coefficient": s.coefficient} for s in self.steer],
            "clamp": [{"sae": c.sae, "latent": c.latent, "value": c.value} for c in self.clamp],
        }


def resolve_sae(saes: dict[str, ServedSAE], name: str | None, param: str) -> ServedSAE:
    """The SAE a request names; `None` picks the only one. RequestError listing the served names otherwise."""
    if not saes:
        raise RequestError(
            "this server serves no SAE: start it with --sae DIR to steer or read features", param=param
        )
    if name is None:
        if len(saes) > 1:
            raise RequestError(
                f"{param}: several SAEs are served, name one of {sorted(saes)} in `sae`", param=param
            )
        return next(iter(saes.values()))
    if name not in saes:
        raise RequestError(f"{param}: unknown SAE {name!r}; served SAEs: {sorted(saes)}", param=param)
    return saes[name]


def check_latent(sae: ServedSAE, latent: int, param: str) -> None:
    if not 0 <= latent < sae.d_sae:
        raise RequestError(
            f"{param}: latent {latent} out of range for SAE {sae.name!r} (d_sae={sae.d_sae}: 0..{sae.d_sae - 1})",
            param=param,
        )
