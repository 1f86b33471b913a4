"""Writing a diff: diff.json (everything), latents.csv (the per-latent table), diff_report.html."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from saeforge.atomic import write_text
from saeforge.diff.analysis import LATENT_FIELDS
from saeforge.diff.run import DiffResult

FORMAT_VERSION = 1


def diff_json(result: DiffResult) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "latents": result.latents,
        "counts": result.counts,
        "n_rows": result.n_rows,
        "shown": result.shown,
        "contexts": {str(k): v for k, v in result.contexts.items()},
        "explanations": {str(k): v for k, v in result.explanations.items()},
        "causal": result.causal,
        **result.meta,
    }


def latents_csv(latents: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(LATENT_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in latents:
        w.writerow({**r, "artefacts": ";".join(r["artefacts"])})
    return buf.getvalue()


def write_diff_outputs(result: DiffResult, out: Path) -> list[Path]:
    """Writes OUT/diff.json, OUT/latents.csv and OUT/diff_report.html (each atomically); returns their paths."""
    from saeforge.report.diff import render_diff_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = {k: result.meta.get(k) for k in ("base_activations", "finetuned_activations", "hook", "d_sae")}
    facts["rows read"] = result.n_rows
    html = render_diff_report(
        result.latents,
        result.counts,
        result.shown,
        result.contexts,
        result.explanations,
        result.causal,
        facts,
    )
    return [
        write_text(out / "diff.json", json.dumps(diff_json(result), indent=1, allow_nan=False) + "\n"),
        write_text(out / "latents.csv", latents_csv(result.latents)),
        write_text(out / "diff_report.html", html),
    ]
