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
from saeforge.report.tokens import context_text, is_marker


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
    activations: str | None = None  # the store its latents were read from (for the `saeforge interpret` line)
    dashboard: str | None = None  # link to its latent dashboard, when one was written


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _varies(values: Sequence[float]) -> bool:
    """Whether a series carries information to plot: not constant (relative to its size), not all NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return v.size > 1 and float(v.max() - v.min()) > 1e-9 * max(1.0, float(np.abs(v).max()))


def _series(r: SAEReport, key: str) -> list[tuple[float, float]]:
    return [(h["tokens"], h[key]) for h in r.history if key in h and h.get("tokens") is not None]


def _curves(reports: Sequence[SAEReport], key: str, ylabel: str, log: bool = False) -> str | None:
    """A training curve of `key`, one line per SAE; None when no SAE's series varies (see `_flat_facts`)."""
    plt = pyplot()

    if not any(_varies([y for _, y in _series(r, key)]) for r in reports):
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for r in reports:
        pts = _series(r, key)
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=r.name, lw=1.4)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    if log and all(y > 0 for r in reports for _, y in _series(r, key)):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(reports) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


# Training curves of report.html: (history key, axis label, log scale).
CURVES = (
    ("loss", "training loss", True),
    ("fvu", "FVU (training batches)", True),
    ("l0", "L0 (active latents per token)", False),
    ("dead_fraction", "dead fraction (of latents)", False),
)


def _flat_facts(reports: Sequence[SAEReport]) -> list[str]:
    """'L0 (active latents per token): 32 at every logged step (topk)' for each series that does not vary."""
    facts = []
    for key, ylabel, _ in CURVES:
        for r in reports:
            ys = [y for _, y in _series(r, key)]
            if ys and not _varies(ys):
                facts.append(f"{ylabel}: {fmt(float(ys[-1]))} at every logged step ({r.name})")
    return facts


def _cell(v: Any) -> str:
    return html.escape(fmt(v))


def _token(tok: str, a: float, peak: float) -> str:
    if is_marker(tok):
        return f'<span class="sp" title="special token">{html.escape(tok)}</span>'
    alpha = min(max(a / peak, 0.0), 1.0)
    title = f' title="activation {a:.3g}"' if a > 0 else ""
    style = f' style="background: rgba(255,120,0,{alpha:.2f})"' if a > 0 else ""
    space = " " if tok.startswith(" ") else ""  # the word is shaded, not the space before it
    return f"{space}<span{style}{title}>{html.escape(tok.removeprefix(' '))}</span>"


def _context_html(ex: ContextExample) -> str:
    peak = max(ex.max_act, *ex.acts, 1e-9)
    spans = "".join(_token(t, a, peak) for t, a in zip(context_text(ex.tokens), ex.acts, strict=True))
    return (
        f'<div class="ctx"><span class="act" title="activation at this context\'s top token">'
        f'{ex.max_act:.3g}</span><span class="txt">{spans}</span></div>'
    )


def _latents_html(r: SAEReport) -> str:
    if not r.latents:
        return ""
    parts = [
        f"<h3>{html.escape(r.name)}: top-activating contexts for a sample of latents</h3>",
        '<p class="note">Left: the latent\'s activation (SAE latent units, the value of its code z) at the '
        "context's top token; tokens are shaded by activation relative to the context's peak (hover for the "
        'value). <span class="sp">[CLS]</span>-style markers are special tokens. Explanations: '
        f"{_judge_hint(r)}</p>",
    ]
    for lat in r.latents:
        promoted = (
            f" &middot; promotes: <code>{html.escape(' '.join(lat.promoted))}</code>" if lat.promoted else ""
        )
        peak = max((e.max_act for e in lat.examples), default=0.0)
        parts.append(
            f'<div class="latent"><div class="lh">latent {lat.latent} &middot; fires on {100 * lat.density:.3g}% '
            f"of tokens &middot; top activation {peak:.3g}{promoted}</div>"
            '<div class="ctx head"><span class="act">activation</span><span class="txt">context</span></div>'
            + "".join(_context_html(e) for e in lat.examples)
            + "</div>"
        )
    return "\n".join(parts)


def _interpret_command(r: SAEReport, judge: bool) -> str:
    """The exact `saeforge interpret` line for this SAE (its held-out store), a judge's flags when asked."""
    acts = r.activations or "ACTIVATIONS"
    cmd = (
        f"saeforge interpret --sae {r.sae_dir} --activations {acts} --latents 200 --out {r.sae_dir}/dashboard"
    )
    if judge:
        cmd += " --judge-url http://HOST:PORT/v1 --judge-model MODEL"
    return cmd


def _judge_hint(r: SAEReport) -> str:
    return (
        "none in this report. For a judge LLM's explanation of each latent (any OpenAI-compatible endpoint) run "
        f"<code>{html.escape(_interpret_command(r, judge=True))}</code>"
    )


def _next_steps(reports: Sequence[SAEReport]) -> str:
    """The verdict of each SAE with its reasons, and where to look next (links and exact commands)."""
    items = []
    for r in reports:
        verdict = str(r.metrics.get("verdict", ""))
        cls = "verdict-good" if verdict == "good" else "verdict-bad"
        evidence = str(r.metrics.get("verdict_evidence", ""))
        reasons = evidence.split(":", 1)[1].strip() if ":" in evidence else evidence
        dashboard = (
            f'<a href="{html.escape(r.dashboard)}">its latent dashboard</a>'
            if r.dashboard
            else f"a dashboard of its latents: <code>{html.escape(_interpret_command(r, judge=False))}</code>"
        )
        items.append(
            f'<li><b>{html.escape(r.name)}</b> at <code>{html.escape(r.hook)}</code>: <span class="{cls}">'
            f"{html.escape(verdict)}</span> &mdash; {html.escape(reasons)}. Next: the numbers in the "
            f'<a href="#evaluation">evaluation table</a>, sampled latents <a href="#latents">below</a>, '
            f"{dashboard}.</li>"
        )
    return f'<section id="next"><h2>What to look at next</h2><ul>{"".join(items)}</ul></section>'


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem;line-height:1.4}
h1{margin-bottom:.2rem} .sub{color:#555;margin-top:0;display:grid;grid-template-columns:max-content 1fr;
gap:.1rem .8rem} .sub b{font-weight:600} .sub span{overflow-wrap:anywhere}
code{font-size:.85em;background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem;max-width:100%}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right;overflow-wrap:anywhere}
th{background:#f4f4f4} td.l,th.l,tbody th{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1rem} img{max-width:100%;height:auto}
.plots img{border:1px solid #eee;flex:0 1 520px;min-width:0}
section.evaluation img{max-width:min(100%,600px)}
.facts{color:#444} .note{color:#555;font-size:.9rem}
.latent{border:1px solid #e3e3e3;border-radius:6px;padding:.5rem .8rem;margin:.6rem 0}
.lh{font-weight:600;margin-bottom:.3rem}
.ctx{font-family:ui-monospace,monospace;font-size:.8rem;margin:.15rem 0;display:flex;gap:.6rem}
.ctx .txt{white-space:pre-wrap;overflow-wrap:anywhere;min-width:0}
.ctx.head{color:#999;font-family:inherit;font-size:.75rem} .act{color:#777;flex:0 0 4.5rem;text-align:right}
.sp{color:#999;font-size:.7em;border:1px solid #ccc;border-radius:3px;padding:0 .2em;margin:0 .2em}
.verdict-good{color:#117a2c;font-weight:600} .verdict-bad{color:#b3261e;font-weight:600}
"""


def render_report(
    reports: Sequence[SAEReport],
    *,
    title: str = "saeforge run",
    facts: dict[str, Any] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """Returns the report as one HTML string. `facts`: key/value lines shown under the title (model, hook...);
    `extra_sections`: the evaluation's sections (`evaluation_section_html`: its table, verdicts and plots)."""
    facts = facts or {}
    head = "".join(f"<b>{html.escape(k)}</b><span>{_cell(v)}</span>" for k, v in facts.items())
    plots = [_curves(reports, key, ylabel, log) for key, ylabel, log in CURVES]
    imgs = "".join(f'<img src="{p}" alt="training curve">' for p in plots if p)
    flat = "".join(f"<li>{html.escape(f)}</li>" for f in _flat_facts(reports))
    flat = f'<ul class="facts">{flat}</ul>' if flat else ""
    latents = "\n".join(_latents_html(r) for r in reports)
    return no_controls(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1><div class="sub">{head}</div>
{_next_steps(reports)}
<div id="evaluation">{"".join(extra_sections)}</div>
<section id="training"><h2>Training</h2><div class="plots">{imgs}</div>{flat}</section>
<section id="latents"><h2>Latents</h2>{latents}</section>
</body></html>
""")
