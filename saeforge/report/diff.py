"""The diff report: one self-contained HTML page (inline CSS, JS and PNG plots) from the diff's plain values.

Input: `latents` (one dict per latent, saeforge.diff.analysis.LATENT_FIELDS), `counts` per category, `shown`
(category -> latent ids given contexts), `contexts` (latent -> list of dicts with `tokens`, `center`,
`activation`, `acts`, `presence_base`, `presence_finetuned`), `explanations` (latent -> text or None), `causal`
(saeforge.diff.causal.causal_check's dict or None) and `facts` (key/value lines under the title). The filter box
hides every table row and latent section whose text lacks one of the typed words; `#q=WORDS` opens it filtered.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

from saeforge.report.dashboard import CSS
from saeforge.report.figures import pyplot
from saeforge.report.format import fmt, no_controls
from saeforge.report.html import _png

MAX_TABLE_ROWS = 5000
_COLOURS = {"shared": "#8c959f", "changed": "#bf8700", "base_only": "#0969da", "finetuned_only": "#cf222e"}

FILTER_JS = """
const q = document.getElementById('q');
const items = Array.from(document.querySelectorAll('[data-search]'));
const count = document.getElementById('count');
function apply() {
  const words = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let n = 0;
  for (const el of items) {
    const ok = words.every(w => el.dataset.search.includes(w));
    el.classList.toggle('hidden', !ok);
    if (ok && el.tagName === 'TR') n++;
  }
  count.textContent = n + ' latents match';
}
q.addEventListener('input', () => { history.replaceState(null, '', '#q=' + encodeURIComponent(q.value)); apply(); });
if (location.hash.startsWith('#q=')) q.value = decodeURIComponent(location.hash.slice(3));
apply();
"""

_EXTRA_CSS = """
.hidden { display: none; } .latent { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px;
margin: 12px 0; } .trio { margin: 6px 0 10px; } .trio .lab { display: inline-block; min-width: 84px;
color: var(--muted); font-size: 11px; } .plots img { max-width: 520px; border: 1px solid var(--line); }
.cat { font-weight: 600; }
"""


def _fmt(v: Any, digits: int = 3) -> str:
    return escape(fmt(v, digits))


def _relative_norm_png(latents: list[dict]) -> str | None:
    plt = pyplot()

    rel = np.array([r["relative_norm"] for r in latents if r["category"] != "dead"], dtype=np.float64)
    if rel.size == 0:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.hist(rel, bins=np.linspace(0, 1, 51), color="#4493f8")
    ax.set_yscale("log")
    ax.set_xlabel("relative decoder norm  ||d_ft|| / (||d_base|| + ||d_ft||)")
    ax.set_ylabel("live latents")
    ax.grid(alpha=0.3)
    return _png(fig)


def _scaling_png(latents: list[dict]) -> str | None:
    plt = pyplot()

    pts = [
        r for r in latents if r["nu_eps"] is not None and r["nu_r"] is not None and r["category"] != "dead"
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for cat, colour in _COLOURS.items():
        sel = [r for r in pts if r["category"] == cat]
        if sel:
            ax.scatter(
                [r["nu_eps"] for r in sel], [r["nu_r"] for r in sel], s=8, c=colour, label=cat, alpha=0.7
            )
    ax.set_xlabel("nu_eps (error scaling ratio)")
    ax.set_ylabel("nu_r (reconstruction scaling ratio)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _show(tok: str) -> str:
    out = tok.replace("\n", "↵").replace("\t", "→")
    return escape("".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in out))


def _tokens_html(tokens: list[str], acts: list[float | None], peak: float, center: int) -> str:
    spans = []
    for i, (t, a) in enumerate(zip(tokens, acts, strict=True)):
        alpha = 0.0 if a is None or peak <= 0 else max(0.0, min(1.0, a / peak))
        style = f" style='background: rgba(255,140,0,{alpha * 0.85:.3f})'" if alpha > 0 else ""
        title = "no row stored" if a is None else f"{a:.4g}"
        spans.append(f"<span class='t{' c' if i == center else ''}'{style} title='{title}'>{_show(t)}</span>")
    return "".join(spans)


def _context_html(c: dict) -> str:
    peak = max([a for a in c["acts"] if a is not None] + [1e-9])
    lines = [("latent", c["acts"]), ("base", c["presence_base"]), ("fine-tuned", c["presence_finetuned"])]
    rows = "".join(
        f"<div class='ctx'><span class='lab'>{name}</span>{_tokens_html(c['tokens'], acts, peak, c['center'])}</div>"
        for name, acts in lines
    )
    return f"<div class='trio'><span class='v'>{c['activation']:.3g}</span>{rows}</div>"


def _latent_section(r: dict, contexts: list[dict], explanation: str | None) -> str:
    centre_tokens = " ".join(c["tokens"][c["center"]].strip() for c in contexts if c["tokens"])
    search = " ".join([str(r["latent"]), r["category"], explanation or "", centre_tokens]).lower()
    stats = " &middot; ".join(
        f"{k} {_fmt(r[k])}" for k in ("relative_norm", "decoder_cosine", "freq", "freq_base", "freq_finetuned",
                                      "nu_eps", "nu_r")
    )  # fmt: skip
    expl = f"<p class='expl'>{escape(explanation)}</p>" if explanation else ""
    body = "".join(_context_html(c) for c in contexts) or "<p class='empty'>no contexts</p>"
    return (
        f"<div class='latent' id='latent-{r['latent']}' data-search='{escape(search, quote=True)}'>"
        f"<h3>latent {r['latent']} <span class='cat' style='color:{_COLOURS.get(r['category'], '#000')}'>"
        f"{r['category']}</span></h3><div class='empty'>{stats}</div>{expl}{body}</div>"
    )


def _causal_html(causal: dict | None) -> str:
    if not causal:
        return ""
    if "skipped" in causal:
        return f"<h2>Causal check</h2><p class='empty'>skipped: {escape(causal['skipped'])}</p>"
    ctrl = causal["control"]
    return (
        "<h2>Causal check</h2><div class='stats'>"
        f"<div class='stat'><b>{_fmt(causal['fraction_closed'])}</b><span>KL closed by removing "
        f"{len(causal['latents'])} fine-tune-only latents</span></div>"
        f"<div class='stat'><b>{_fmt(ctrl['fraction_closed_mean'])}</b><span>… by as many random latents "
        f"(mean of {len(ctrl['fraction_closed'])})</span></div>"
        f"<div class='stat'><b>{_fmt(causal['kl_base_finetuned'])}</b><span>KL(base ‖ fine-tuned) per token</span>"
        f"</div><div class='stat'><b>{causal['positions_scored']:,}</b><span>positions scored</span></div></div>"
    )


def _table(latents: list[dict], explanations: dict[int, str | None]) -> str:
    keys = ("relative_norm", "decoder_cosine", "freq", "freq_base", "freq_finetuned", "nu_eps", "nu_r")
    live = [r for r in latents if r["category"] != "dead"]
    order = {"finetuned_only": 0, "base_only": 1, "changed": 2, "shared": 3}
    live.sort(key=lambda r: (order.get(r["category"], 4), -(r["freq"] or 0.0)))
    rows = []
    for r in live[:MAX_TABLE_ROWS]:
        expl = explanations.get(r["latent"]) or ""
        search = f"{r['latent']} {r['category']} {' '.join(r['artefacts'])} {expl}".lower()
        cells = "".join(f"<td class='num'>{_fmt(r[k])}</td>" for k in keys)
        link = (
            f"<a href='#latent-{r['latent']}'>{r['latent']}</a>"
            if expl or r["latent"] in explanations
            else r["latent"]
        )
        rows.append(
            f"<tr data-search='{escape(search, quote=True)}'><td class='num'>{link}</td><td>{r['category']}</td>"
            f"<td>{escape(', '.join(r['artefacts']))}</td>{cells}<td>{escape(expl)}</td></tr>"
        )
    more = (
        f"<p class='empty'>first {MAX_TABLE_ROWS} of {len(live)} live latents</p>"
        if len(live) > MAX_TABLE_ROWS
        else ""
    )
    head = "".join(f"<th>{k}</th>" for k in ("latent", "category", "artefacts", *keys, "explanation"))
    return f"<table id='latents'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def render_diff_report(
    latents: list[dict],
    counts: dict[str, int],
    shown: dict[str, list[int]],
    contexts: dict[int, list[dict]],
    explanations: dict[int, str | None],
    causal: dict | None,
    facts: dict[str, Any],
) -> str:
    """The report as one HTML string."""
    head = "".join(f"<div><b>{escape(k)}</b>: {_fmt(v)}</div>" for k, v in facts.items())
    stats = "".join(
        f"<div class='stat'><b>{n:,}</b><span>{escape(c)}</span></div>" for c, n in counts.items()
    )
    plots = "".join(f"<img src='{p}'>" for p in (_relative_norm_png(latents), _scaling_png(latents)) if p)
    by_id = {r["latent"]: r for r in latents}
    sections = []
    for cat, ids in shown.items():
        if ids:
            sections.append(
                f"<h2>Top {escape(cat)} latents: contexts, latent activation and each model's presence</h2>"
            )
            sections += [_latent_section(by_id[j], contexts.get(j, []), explanations.get(j)) for j in ids]
    body = (
        f"<div class='sub'>{head}</div><h2>Latents per category</h2><div class='stats'>{stats}</div>"
        f"{_causal_html(causal)}<h2>Decoder norms and Latent Scaling</h2><div class='plots'>{plots}</div>"
        "<input id='q' type='search' placeholder='Filter by latent id, category, artefact, explanation or token…'>"
        f"<div id='count' class='empty'></div>{''.join(sections)}<h2>All live latents</h2>"
        f"{_table(latents, {j: explanations.get(j) for ids in shown.values() for j in ids})}"
    )
    return no_controls(
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>saeforge diff</title>"
        f"<style>{CSS}{_EXTRA_CSS}</style></head><body><header><h1>saeforge diff</h1></header>"
        f"<main>{body}</main><script>{FILTER_JS}</script></body></html>\n"
    )
