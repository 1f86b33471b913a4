"""The evaluation's comparison table and its HTML section (for report.html), from eval's result dicts."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from saeforge.report.figures import density_histogram_figure, figure_png_bytes, pareto_figure
from saeforge.report.format import fmt, plain
from saeforge.report.metrics import label

COMPARISON_KEYS = (
    "name",
    "verdict",
    "d_sae",
    "l0",
    "fvu",
    "explained_variance",
    "ce_loss_score",
    "kl_div_score",
    "pooled_cosine",
    "pooled_cosine_score",
    "dead_fraction",
    "dense_fraction_10",
    "duplication",
    "absorption_proxy",
    "stability_match_fraction",
)
PARETO_PLOTS = {"pareto_l0_fvu.png": ("fvu", False), "pareto_l0_ce_loss_score.png": ("ce_loss_score", True)}


def comparison_keys(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """COMPARISON_KEYS, then the per-site columns some result has: `target_fvu` (a transcoder's FVU on the site
    it writes) and `fvu.<site>` (a crosscoder's FVU on each site), in the order the results give them."""
    extra: dict[str, None] = {}
    for r in results:
        extra.update({k: None for k in r if k == "target_fvu" or k.startswith("fvu.")})
    return [*COMPARISON_KEYS, *extra]


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE with the `comparison_keys` columns (None where not measured)."""
    keys = comparison_keys(results)
    return [{k: plain(r.get(k)) for k in keys} for r in results]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _th(key: str) -> str:
    """A header cell showing the metric's label (`report.metrics`), its metrics.json key on hover."""
    name = label(key)
    title = f' title="{html.escape(key)}"' if name != key else ""
    return f"<th{title}>{html.escape(name)}</th>"


SIDEWAYS_MAX_SAES = 6  # up to this many SAEs the table has one column per SAE (it fits a narrow window)


def comparison_table_html(results: Sequence[Mapping[str, Any]]) -> str:
    """The comparison table of measured columns: one row per metric and a column per SAE for a few SAEs (fits
    an 800 px window), one row per SAE for more."""
    rows, keys = comparison_rows(results), comparison_keys(results)
    keys = [k for k in keys if k == "name" or any(row[k] is not None for row in rows)]
    if len(rows) <= SIDEWAYS_MAX_SAES:
        head = "<th>metric</th>" + "".join(f"<th>{html.escape(fmt(row['name']))}</th>" for row in rows)
        body = "".join(
            "<tr>" + _th(k) + "".join(f"<td>{html.escape(fmt(row[k]))}</td>" for row in rows) + "</tr>"
            for k in keys
            if k != "name"
        )
    else:
        head = "".join(_th(k) for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(fmt(row[k]))}</td>" for k in keys) + "</tr>" for row in rows
        )
    return f'<table class="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def evaluation_section_html(results: Sequence[Mapping[str, Any]]) -> str:
    """A self-contained HTML <section> (table, verdicts with evidence, embedded PNG plots) for report.html."""
    parts = [
        '<section class="evaluation">',
        "<h2>Evaluation (held-out activations)</h2>",
        comparison_table_html(results),
        "<ul>",
        *(
            f"<li><b>{html.escape(str(r['name']))}</b>: {html.escape(str(r.get('verdict_evidence', '')))}</li>"
            for r in results
        ),
        "</ul>",
    ]
    for r in results:
        if r.get("latent_density") is not None:
            fig = density_histogram_figure(r["latent_density"], str(r["name"]), r.get("dead_density_floor"))
            parts.append(_img(figure_png_bytes(fig), f"latent density histogram of {r['name']}"))
    if len(results) > 1:
        for key, higher in PARETO_PLOTS.values():
            fig = pareto_figure(results, key, higher)
            if fig is not None:
                parts.append(_img(figure_png_bytes(fig), f"L0 against {key}"))
    parts.append("</section>")
    return "\n".join(parts)
