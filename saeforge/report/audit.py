"""The audit report: one self-contained HTML page (table + plot) from an audit log's `Summary` (plain values)."""

from __future__ import annotations

import html
import time

from saeforge.report.html import _CSS, _png


def _plot(summary) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary.buckets:
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    hours = [(b - summary.buckets[0]) / 3600 for b in summary.buckets]
    ax1.bar(hours, summary.requests_per_bucket, width=(hours[1] - hours[0]) * 0.8 if len(hours) > 1 else 0.5)
    ax1.set_ylabel("requests")
    for name in summary.tracked:
        pts = [(h, v) for h, v in zip(hours, summary.series[name], strict=True) if v is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax2.plot(xs, ys, marker="o", lw=1.2, label=name)
    ax2.set_xlabel(f"hours since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(summary.buckets[0]))}")
    ax2.set_ylabel("mean max activation")
    if summary.tracked:
        ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _png(fig)


def render_audit_report(summary, source: str, chain: str) -> str:
    """HTML of `summary` (saeforge.serve.summary.Summary); `chain`: the verification result in words."""
    rows = []
    for g in summary.groups:
        feats = "<br>".join(
            f"{html.escape(f.sae)}:{f.latent} &middot; {f.requests} req &middot; {f.mean_max:.3g}"
            + (f" &middot; <i>{html.escape(f.label)}</i>" if f.label else "")
            for f in g.features
        )
        rows.append(
            f'<tr><td class="l">{html.escape(g.name)}</td><td>{g.requests}</td><td>{g.errors}</td>'
            f'<td>{g.tokens}</td><td class="l">{feats}</td></tr>'
        )
    table = (
        '<table><tr><th class="l">group</th><th>requests</th><th>errors</th><th>tokens</th>'
        '<th class="l">top features (sae:latent &middot; requests &middot; mean of max &middot; label)</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    plot = _plot(summary)
    img = f'<div class="plots"><img src="{plot}"></div>' if plot else "<p>no timed records</p>"
    cls = "verdict-good" if chain == "intact" else "verdict-bad"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>saeforge audit report</title><style>{_CSS}</style></head>
<body><h1>saeforge audit report</h1>
<div class="sub"><div><b>log</b>: {html.escape(source)}</div><div><b>records</b>: {summary.records}</div>
<div><b>hash chain</b>: <span class="{cls}">{html.escape(chain)}</span></div></div>
<h2>Features per group</h2>{table}
<h2>Requests and tracked features over time</h2>{img}
</body></html>
"""
