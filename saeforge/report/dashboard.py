"""A static HTML dashboard: `index.html` (searchable list of latents), `latents/<id>.html` (one page per
latent), `attribution.html` (when attributions were run). No network: CSS and JS are inline, the histogram is
inline SVG. Token backgrounds are shaded by activation / the latent's max activation; hovering a token shows
its activation. The list filters as one types (every word must appear in the latent's id, explanation, top
or promoted tokens); `index.html#q=WORDS` opens it filtered.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from saeforge.atomic import write_text
from saeforge.report.format import fmt, no_controls
from saeforge.report.tokens import context_text, is_marker

if TYPE_CHECKING:  # the records are read as plain attributes: rendering imports no stage
    from saeforge.interpret.records import Interpretation, LatentRecord, TokenContext

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d8dee4; --bg:#f6f8fa; --acc:#0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { background: #24292f; color: #fff; padding: 14px 28px; display: flex; align-items: baseline; gap: 18px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header a { color: #c9d1d9; text-decoration: none; }
header .sub { color: #8c959f; font-size: 13px; }
main { padding: 20px 28px; max-width: 1200px; }
h2 { font-size: 15px; margin: 26px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
a { color: var(--acc); }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 4px; }
.stat { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
.stat b { display: block; font-size: 16px; }
.stat span { color: var(--muted); font-size: 12px; }
.expl { font-size: 16px; margin: 10px 0; }
.unclear { color: var(--muted); font-style: italic; }
input#q { width: 100%; max-width: 520px; padding: 8px 12px; font-size: 14px; border: 1px solid var(--line);
          border-radius: 6px; margin: 6px 0 14px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; font-size: 12px; color: var(--muted); text-transform: uppercase; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.hidden { display: none; }
.ctx { font: 13px/1.9 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; padding: 4px 8px;
       border-bottom: 1px solid #eef1f4; white-space: pre-wrap; word-break: break-word; }
.ctx .v { display: inline-block; min-width: 72px; color: var(--muted); font-size: 11px; }
.ctx.head { color: var(--muted); font: 11px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
.sp { color: var(--muted); font-size: 10px; border: 1px solid var(--line); border-radius: 3px; padding: 0 3px;
      margin: 0 3px; }
code { font-size: 12px; background: var(--bg); padding: 0 3px; overflow-wrap: anywhere; }
.t { border-radius: 3px; padding: 1px 0; }
.t.c { outline: 1.5px solid #cf222e; }
.chip { display: inline-block; font: 12px ui-monospace, Menlo, monospace; background: var(--bg);
        border: 1px solid var(--line); border-radius: 4px; padding: 0 6px; margin: 2px 3px 2px 0;
        white-space: pre; }
.chip.up { border-color: #1a7f37; } .chip.down { border-color: #cf222e; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
.cols > div { min-width: 0; }
td { overflow-wrap: anywhere; }
@media (max-width: 900px) { .cols { grid-template-columns: 1fr; } main { padding: 16px; } }
.band { color: var(--muted); font-size: 12px; margin: 10px 0 2px; }
.empty { color: var(--muted); }
svg .bar { fill: #4493f8; }
"""

FILTER_JS = """
const q = document.getElementById('q');
const rows = Array.from(document.querySelectorAll('tbody tr'));
const count = document.getElementById('count');
function apply() {
  const words = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let n = 0;
  for (const r of rows) {
    const hay = r.dataset.search;
    const ok = words.every(w => hay.includes(w));
    r.classList.toggle('hidden', !ok);
    if (ok) n++;
  }
  count.textContent = n + ' of ' + rows.length + ' latents';
}
q.addEventListener('input', () => { history.replaceState(null, '', '#q=' + encodeURIComponent(q.value)); apply(); });
if (location.hash.startsWith('#q=')) q.value = decodeURIComponent(location.hash.slice(3));
apply();
"""


def _page(title: str, body: str, root: str, sub: str = "", script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return no_controls(
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body><header><h1><a href='{root}index.html'>saeforge features</a></h1>"
        f"<span class='sub'>{escape(sub)}</span></header><main>{body}</main>{js}</body></html>\n"
    )


def _num(x: float | None, digits: int = 3) -> str:
    return fmt(None if x is None else float(x), digits)


def _show(tok: str) -> str:
    """Display form of a token: newlines as ↵, tabs as →, other control characters as \\xNN; escaped."""
    out = tok.replace("\n", "↵").replace("\t", "→")
    return escape("".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in out))


def _token_span(tok: str, a: float | None, max_act: float, centre: bool) -> str:
    if is_marker(tok):
        return f"<span class='sp' title='special token'>{_show(tok.strip())}</span>"
    space = " " if tok.startswith(" ") else ""  # the word is shaded, not the space before it
    shown = _show(tok.removeprefix(" "))
    if a is None:
        return f"{space}<span class='t' title='no activation stored'>{shown}</span>"
    alpha = 0.0 if max_act <= 0 else max(0.0, min(1.0, a / max_act))
    style = f" style='background: rgba(255,140,0,{alpha * 0.85:.3f})'" if alpha > 0 else ""
    cls = "t c" if centre else "t"
    return f"{space}<span class='{cls}'{style} title='activation {a:.4g}'>{shown}</span>"


CONTEXT_HEAD = (
    "<div class='ctx head'><span class='v'>activation</span>context (the outlined token's activation; "
    "shading: activation / the latent's max; hover a token for its value)</div>"
)


def context_html(ctx: TokenContext, max_act: float) -> str:
    """One window as a line of tokens shaded by activation (centre token outlined), read as text."""
    spans = "".join(
        _token_span(t, a, max_act, i == ctx.center)
        for i, (t, a) in enumerate(zip(context_text(ctx.tokens), ctx.acts, strict=True))
    )
    return f"<div class='ctx'><span class='v' title='activation at the outlined token'>{ctx.activation:.3g}</span>{spans}</div>"


def _contexts(contexts, max_act: float) -> str:
    return CONTEXT_HEAD + "".join(context_html(c, max_act) for c in contexts) if contexts else ""


def judge_command(meta: dict, out_dir: Path | str, latents: list[int]) -> str:
    """The exact `saeforge interpret` line that adds a judge's explanations to this dashboard."""
    ids = ",".join(map(str, latents))
    return (
        f"saeforge interpret --sae {meta.get('sae') or 'SAE'} --activations {meta.get('activations') or 'ACTIVATIONS'} "
        f"--latent-ids {ids} --out {out_dir} --judge-url http://HOST:PORT/v1 --judge-model MODEL"
    )


def histogram_svg(rec: LatentRecord, width: int = 520, height: int = 120) -> str:
    counts = rec.hist_counts
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    if last < 0:
        return "<p class='empty'>never active</p>"
    counts = counts[: last + 1]
    top = max(counts)
    bw = width / len(counts)
    bars = "".join(
        f"<rect class='bar' x='{i * bw:.1f}' y='{height - 18 - (height - 24) * c / top:.1f}' "
        f"width='{max(bw - 1, 1):.1f}' height='{(height - 24) * c / top:.1f}'><title>{c}</title></rect>"
        for i, c in enumerate(counts)
    )
    hi = rec.hist_hi * (last + 1) / len(rec.hist_counts)
    axis = (
        f"<text x='0' y='{height - 4}' font-size='11' fill='#656d76'>0</text>"
        f"<text x='{width / 2}' y='{height - 4}' font-size='11' fill='#656d76' text-anchor='middle'>{hi / 2:.3g}</text>"
        f"<text x='{width}' y='{height - 4}' font-size='11' fill='#656d76' text-anchor='end'>{hi:.3g}</text>"
    )
    return (
        f"<svg viewBox='0 0 {width} {height}' width='100%' style='max-width:{width}px' role='img' "
        f"aria-label='activation histogram'>{bars}{axis}</svg><div class='band'>activation (SAE latent units) "
        "on the rows where the latent is active; bar height: rows</div>"
    )


def _chips(scores, cls: str) -> str:
    if not scores:
        return "<span class='empty'>–</span>"
    return "".join(f"<span class='chip {cls}' title='{s.value:.4g}'>{escape(s.token)}</span>" for s in scores)


def _logits(rec: LatentRecord) -> str:
    if not rec.promoted and not rec.suppressed:
        return (
            "<h2>Logits</h2><p class='empty'>not computed (an encoder model has no unembedding, or the run "
            "skipped them with --no-logits)</p>"
        )
    return (
        f"<h2>Logits the decoder direction promotes</h2>{_chips(rec.promoted, 'up')}"
        f"<h2>… and suppresses</h2>{_chips(rec.suppressed, 'down')}"
    )


def latent_page(rec: LatentRecord, sub: str, judge_line: str = "") -> str:
    """One latent's page; `judge_line`: the command that explains it (shown when it has no explanation)."""
    det = rec.detection
    if rec.explanation is None and not rec.unclear:
        how = (
            f": <code>{escape(judge_line)}</code>"
            if judge_line
            else " (run saeforge interpret with --judge-url)"
        )
        expl = f"<p class='expl unclear'>not explained yet; to have a judge LLM explain it, run{how}</p>"
    elif rec.unclear:
        expl = "<p class='expl unclear'>the judge found no clear pattern</p>"
    else:
        expl = f"<p class='expl'>{escape(rec.explanation or '')}</p>"
    stats = [
        ("density", f"{rec.density:.3%}"),
        ("active rows", f"{rec.n_active:,} / {rec.n_rows:,}"),
        ("max activation", _num(rec.max_activation)),
        ("mean activation when active", _num(rec.mean_activation)),
    ]
    if det is not None:
        stats += [
            ("detection bal. acc.", f"{det.balanced_accuracy:.2f}"),
            ("detection F1", f"{det.f1:.2f}"),
            ("unparseable", f"{det.n_unparseable} / {det.n}"),
        ]
    stat_html = "".join(f"<div class='stat'><b>{v}</b><span>{k}</span></div>" for k, v in stats)
    top = _contexts(rec.top, rec.max_activation) or "<p class='empty'>never active</p>"
    bands = []
    for b in sorted({c.band for c in rec.quantiles if c.band is not None}):
        lo = rec.quantile_edges[b] if b < len(rec.quantile_edges) else None
        hi = rec.quantile_edges[b + 1] if b + 1 < len(rec.quantile_edges) else None
        bands.append(f"<div class='band'>band {b + 1} (activation {_num(lo)} – {_num(hi)})</div>")
        bands.append(_contexts([c for c in rec.quantiles if c.band == b], rec.max_activation))
    neg = _contexts(rec.negatives[:5], rec.max_activation)
    body = (
        f"<h2 style='border:0;font-size:22px;margin-top:4px'>Latent {rec.latent}</h2>{expl}"
        f"<div class='stats'>{stat_html}</div>"
        f"<div class='cols'><div><h2>Activation histogram (active rows)</h2>{histogram_svg(rec)}</div>"
        f"<div>{_logits(rec)}</div></div>"
        f"<h2>Top activating contexts</h2>{top}"
        f"<h2>Samples across activation quantiles</h2>{''.join(bands) or '<p class=empty>none</p>'}"
        f"<h2>Non-activating contexts</h2>{neg or '<p class=empty>none</p>'}"
    )
    return _page(f"Latent {rec.latent}", body, "../", sub)


def index_page(interp: Interpretation, sub: str, judge_line: str = "") -> str:
    rows = []
    for r in interp.latents:
        toks = " ".join(escape(repr(t.strip()) if t.strip() else repr(t)) for t in r.top_tokens(5))
        promoted = " ".join(escape(t.token.strip() or repr(t.token)) for t in r.promoted[:5])
        expl = "<i class='unclear'>unclear</i>" if r.unclear else escape(r.explanation or "")
        search = " ".join(
            [str(r.latent), r.explanation or "", *(t.strip() for t in r.top_tokens(10))]
            + [t.token.strip() for t in r.promoted[:10]]
        ).lower()
        score = _num(r.detection.balanced_accuracy, 2) if r.detection else "–"
        rows.append(
            f"<tr data-search='{escape(search, quote=True)}'><td class='num'>"
            f"<a href='latents/{r.latent}.html'>{r.latent}</a></td><td class='num'>{r.density:.3%}</td>"
            f"<td class='num'>{_num(r.max_activation)}</td><td>{expl}</td><td>{toks}</td><td>{promoted}</td>"
            f"<td class='num'>{score}</td></tr>"
        )
    attr = "<p><a href='attribution.html'>Logit attribution</a></p>" if interp.attributions else ""
    meta = interp.meta
    judge = meta.get("judge")
    jline = ""
    if judge:
        jline = (
            f"<div class='stat'><b>{judge['unclear_share']:.0%}</b><span>unclear</span></div>"
            f"<div class='stat'><b>{_num(judge.get('mean_balanced_accuracy'), 2)}</b>"
            "<span>mean detection bal. acc.</span></div>"
        )
    if judge_line and not any(r.explanation or r.unclear for r in interp.latents):
        attr += (
            "<p class='unclear'>No explanations yet. To have a judge LLM explain every latent (any "
            f"OpenAI-compatible endpoint), run: <code>{escape(judge_line)}</code></p>"
        )
    body = (
        f"<div class='stats'><div class='stat'><b>{len(interp.latents)}</b><span>latents</span></div>"
        f"<div class='stat'><b>{meta.get('n_rows', 0):,}</b><span>rows read</span></div>{jline}</div>{attr}"
        "<input id='q' type='search' placeholder='Filter by explanation, token or latent id…' autofocus>"
        "<div id='count' class='empty'></div>"
        "<table><thead><tr><th>latent</th><th>density</th><th>max activation</th><th>explanation</th>"
        "<th>top tokens</th><th>promotes</th><th>detection</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _page("saeforge features", body, "", sub, FILTER_JS)


def attribution_page(interp: Interpretation, sub: str) -> str:
    known = {r.latent for r in interp.latents}

    def cell(latent: int) -> str:
        return f"<a href='latents/{latent}.html'>{latent}</a>" if latent in known else str(latent)

    parts = []
    for a in interp.attributions:
        head = (
            f"<h2>Prompt {escape(json.dumps(a['prompt']))} → target {escape(repr(a['target']))}</h2>"
            f"<p>target logit {a['target_logit']:.4g}; direct contributions sum {a['direct_sum']:.4g}</p>"
        )
        rows = "".join(
            f"<tr><td class='num'>{cell(r['latent'])}</td>"
            f"<td class='num'>{r['activation']:.4g}</td><td class='num'>{r['direct']:+.4g}</td>"
            f"<td class='num'>{'–' if r.get('ablation') is None else format(r['ablation'], '+.4g')}</td></tr>"
            for r in a["rows"]
        )
        parts.append(
            head + "<table><thead><tr><th>latent</th><th>activation</th><th>direct effect on logit</th>"
            f"<th>ablation Δ logit</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return _page("Logit attribution", "".join(parts), "", sub)


def write_dashboard(interp: Interpretation, out_dir: Path) -> Path:
    """Writes the dashboard into out_dir (index.html, latents/*.html, attribution.html). Returns index.html."""
    out_dir = Path(out_dir)
    sub = str(interp.meta.get("sae", ""))
    line = judge_command(interp.meta, out_dir, [r.latent for r in interp.latents])
    for rec in interp.latents:
        write_text(out_dir / "latents" / f"{rec.latent}.html", latent_page(rec, sub, line))
    if interp.attributions:
        write_text(out_dir / "attribution.html", attribution_page(interp, sub))
    index = out_dir / "index.html"
    write_text(index, index_page(interp, sub, line))
    return index
