"""What interpretation returns: plain dataclasses that round-trip through `latents.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeforge.atomic import write_text

FORMAT_VERSION = 1


@dataclass
class TokenContext:
    """A token window around one row of the activation stream.

    seq, pos: the row (sequence, position) the window is centred on; activation: the latent there.
    start: position of token_ids[0] in the sequence. token_ids / tokens / acts: one entry per window token;
    acts[t] is the latent's activation on that token, None where the store has no row for it (e.g. BOS).
    band: activation-quantile band (0 = lowest) for quantile samples, None otherwise.
    """

    seq: int
    pos: int
    activation: float
    start: int
    token_ids: list[int]
    tokens: list[str]
    acts: list[float | None]
    band: int | None = None

    @property
    def center(self) -> int:
        """Index of the centre row inside the window."""
        return self.pos - self.start


@dataclass
class TokenScore:
    """A vocabulary token and a score (a logit contribution)."""

    token_id: int
    token: str
    value: float


@dataclass
class DetectionScore:
    """The judge's detection scoring of one explanation on held-out contexts.

    Unparseable answers count as wrong predictions (an activating context answered unparseably is a false
    negative, a non-activating one a false positive) and are reported in `n_unparseable`.
    """

    tp: int
    fp: int
    tn: int
    fn: int
    n_unparseable: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def balanced_accuracy(self) -> float:
        tpr = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        tnr = self.tn / (self.tn + self.fp) if self.tn + self.fp else 0.0
        return (tpr + tnr) / 2

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0


@dataclass
class SiteWeight:
    """How strongly a latent reads and writes one site (a transcoder's input and output, a crosscoder's sites).

    reads: ||encoder column|| at the site (None where it does not read it); writes: ||decoder row|| at the site
    (None where it does not write it), in the site's activation units.
    """

    site: str
    reads: float | None
    writes: float | None


@dataclass
class LatentRecord:
    """Everything interpretation knows about one latent.

    density: fraction of rows with z > 0. hist_hi / hist_counts: equal-width histogram of active values over
    [0, hist_hi). top: up to k highest-activation contexts (non-overlapping windows). quantiles: samples across
    activation-quantile bands (from a uniform sample of active rows). negatives: windows where the latent never
    fires. promoted / suppressed: tokens whose logits the decoder direction raises / lowers most (causal LMs).
    explanation / unclear / detection: filled by the judge. sites: per-site encoder and decoder norms of a
    dictionary across sites (empty for an SAE).
    """

    latent: int
    density: float
    n_active: int
    n_rows: int
    max_activation: float
    mean_activation: float
    hist_hi: float
    hist_counts: list[int]
    quantile_edges: list[float]
    top: list[TokenContext] = field(default_factory=list)
    quantiles: list[TokenContext] = field(default_factory=list)
    negatives: list[TokenContext] = field(default_factory=list)
    promoted: list[TokenScore] = field(default_factory=list)
    suppressed: list[TokenScore] = field(default_factory=list)
    explanation: str | None = None
    unclear: bool = False
    detection: DetectionScore | None = None
    sites: list[SiteWeight] = field(default_factory=list)

    def top_tokens(self, n: int = 5) -> list[str]:
        """The most frequent max-activating tokens over the top contexts, most frequent first."""
        counts: dict[str, int] = {}
        for c in self.top:
            t = c.tokens[c.center]
            counts[t] = counts.get(t, 0) + 1
        return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


@dataclass
class Interpretation:
    """The result of `interpret`: the latents plus where they came from (and judge summary when judged)."""

    latents: list[LatentRecord]
    meta: dict[str, Any] = field(default_factory=dict)
    attributions: list[dict[str, Any]] = field(default_factory=list)

    def by_latent(self) -> dict[int, LatentRecord]:
        return {r.latent: r for r in self.latents}


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        d = {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, DetectionScore):
            d["balanced_accuracy"] = obj.balanced_accuracy
            d["f1"] = obj.f1
        return d
    if isinstance(obj, list):
        return [_to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    return obj


def _ctx(d: dict) -> TokenContext:
    return TokenContext(**d)


def _record(d: dict) -> LatentRecord:
    d = dict(d)
    for key in ("top", "quantiles", "negatives"):
        d[key] = [_ctx(c) for c in d.get(key, [])]
    for key in ("promoted", "suppressed"):
        d[key] = [TokenScore(**t) for t in d.get(key, [])]
    d["sites"] = [SiteWeight(**w) for w in d.get("sites", [])]
    det = d.get("detection")
    if det is not None:
        d["detection"] = DetectionScore(**{k: det[k] for k in ("tp", "fp", "tn", "fn", "n_unparseable")})
    return LatentRecord(**d)


def interpretation_to_dict(interp: Interpretation) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **_to_json(interp)}


def interpretation_from_dict(d: dict[str, Any]) -> Interpretation:
    if d.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"latents.json has format_version {d.get('format_version')!r}, this saeforge reads {FORMAT_VERSION}: "
            "re-run `saeforge interpret`"
        )
    return Interpretation(
        latents=[_record(r) for r in d["latents"]],
        meta=d.get("meta", {}),
        attributions=d.get("attributions", []),
    )


def save_interpretation(interp: Interpretation, path: Path) -> None:
    """Writes `latents.json` atomically."""
    write_text(Path(path), json.dumps(interpretation_to_dict(interp), indent=1))


def load_interpretation(path: Path) -> Interpretation:
    """Reads `latents.json` (a file, or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "latents.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `saeforge interpret ... --out DIR` first")
    return interpretation_from_dict(json.loads(path.read_text(encoding="utf-8")))
