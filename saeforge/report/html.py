"""The run report: one self-contained HTML file (inline CSS, plots embedded as PNG), viewable offline.

The report renders values other stages computed; it computes nothing itself:

- `SAEReport.history`: training metrics per logged step (dicts with `tokens` and e.g. `loss`, `l0`, `fvu`,
  `dead_fraction`), as the trainer logs them;
- `SAEReport.metrics`: the flat evaluation metrics (`metrics.json`), `verdict` and `verdict_evidence` included;
- `SAEReport.density`: [d_sae] fraction of evaluation tokens on which each latent fired;
- `SAEReport.latents`: a sample of latents with their top-activating contexts (`LatentContexts`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saeforge.report.figures import pyplot
from saeforge.report.format import fmt, no_controls

HEADLINE_KEYS = ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction_10", "ce_loss_score")


@dataclass
class ContextExample:
    """One context: its tokens (as text pieces) and the latent's activation on each, [len(tokens)]."""

    tokens: list[str]
    acts: list[float]
    max_act: float


@dataclass
class LatentContexts:
    latent: int
    density: float
    examples: list[ContextExample]
    promoted: list[str] = field(default_factory=list)


@dataclass
class SAEReport:
    name: str
    hook: str
    sae_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    density: np.ndarray | None = None
    latents: list[LatentContexts] = field(default_factory=list)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves(reports: Sequence[SAEReport], key: str, ylabel: str, log: bool = False) -> str | None:
    plt = pyplot()

    if not any(any(key in h for h in r.history) for r in reports):
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for r in reports:
        pts = [(h["tokens"], h[key]) for h in r.history if key in h and h.get("tokens") is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=r.name, lw=1.4)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(reports) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def _density_hist(reports: Sequence[SAEReport]) -> str | None:
    plt = pyplot()

    dens = [(r.name, r.density) for r in reports if r.density is not None]
    if not dens:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    bins = np.linspace(-7, 0, 57)
    for name, d in dens:
        d = np.asarray(d, dtype=np.float64)
        alive = d[d > 0]
        ax.hist(
            np.log10(alive), bins=bins, histtype="step", lw=1.4, label=f"{name} ({(d == 0).mean():.1%} dead)"
        )
    ax.set_xlabel("log10 latent density (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _cell(v: Any) -> str:
    return html.escape(fmt(v))


def _context_html(ex: ContextExample) -> str:
    peak = max(ex.max_act, 1e-9)
    spans = []
    for tok, a in zip(ex.tokens, ex.acts, strict=True):
        alpha = min(max(a / peak, 0.0), 1.0)
        title = f' title="{a:.3g}"' if a > 0 else ""
        style = f' style="background: rgba(255,120,0,{alpha:.2f})"' if a > 0 else ""
        spans.append(f"<span{style}{title}>{html.escape(tok)}</span>")
    return f'<div class="ctx"><span class="act">{ex.max_act:.2f}</span> {"".join(spans)}</div>'


def _latents_html(r: SAEReport) -> str:
    if not r.latents:
        return ""
    parts = [f"<h3>{html.escape(r.name)}: top-activating contexts for a sample of latents</h3>"]
    for lat in r.latents:
        promoted = (
            f" &middot; promotes: <code>{html.escape(' '.join(lat.promoted))}</code>" if lat.promoted else ""
        )
        parts.append(
            f'<div class="latent"><div class="lh">latent {lat.latent} &middot; density '
            f"{lat.density:.2e}{promoted}</div>" + "".join(_context_html(e) for e in lat.examples) + "</div>"
        )
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1rem} .plots img{max-width:520px;border:1px solid #eee}
.latent{border:1px solid #e3e3e3;border-radius:6px;padding:.5rem .8rem;margin:.6rem 0}
.lh{font-weight:600;margin-bottom:.3rem} .ctx{font-family:ui-monospace,monospace;font-size:.8rem;margin:.15rem 0;
white-space:pre-wrap} .act{color:#999;display:inline-block;min-width:3.5rem}
.verdict-good{color:#117a2c;font-weight:600} .verdict-bad{color:#b3261e;font-weight:600}
"""


def render_report(
    reports: Sequence[SAEReport],
    *,
    title: str = "saeforge run",
    facts: dict[str, Any] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """Returns the report as one HTML string. `facts`: key/value lines shown under the title (model, hook...)."""
    facts = facts or {}
    head = "".join(f"<div><b>{html.escape(k)}</b>: {_cell(v)}</div>" for k, v in facts.items())
    keys = [k for k in HEADLINE_KEYS if any(k in r.metrics for r in reports)]
    rows = []
    for r in reports:
        verdict = str(r.metrics.get("verdict", ""))
        cls = "verdict-good" if verdict == "good" else "verdict-bad"
        cells = "".join(f"<td>{_cell(r.metrics.get(k, ''))}</td>" for k in keys)
        evidence = str(r.metrics.get("verdict_evidence", ""))
        evidence = html.escape(evidence.removeprefix(f"{verdict}:").strip())
        rows.append(
            f'<tr><td class="l">{html.escape(r.name)}</td><td class="l">{html.escape(r.hook)}</td>{cells}'
            f'<td class="l"><span class="{cls}">{html.escape(verdict)}</span> {evidence}</td></tr>'
        )
    table = (
        '<table><tr><th class="l">SAE</th><th class="l">hook</th>'
        + "".join(f"<th>{k}</th>" for k in keys)
        + '<th class="l">verdict</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    plots = [
        _curves(reports, "loss", "training loss", log=True),
        _curves(reports, "l0", "L0 (active latents per token)"),
        _curves(reports, "fvu", "FVU (training batches)", log=True),
        _curves(reports, "dead_fraction", "dead fraction"),
        _density_hist(reports),
    ]
    imgs = "".join(f'<img src="{p}">' for p in plots if p)
    latents = "\n".join(_latents_html(r) for r in reports)
    return no_controls(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1><div class="sub">{head}</div>
<h2>Headline metrics (held-out activations)</h2>{table}
<h2>Training and latent density</h2><div class="plots">{imgs}</div>
{"".join(extra_sections)}
<h2>Latents</h2>{latents}
</body></html>
""")
