"""The feature index behind the server: labels for read-out, search by text, one latent's description.

An index folder is what `saeforge interpret --out` writes: `features.sqlite` (searched with
`saeforge.interpret.index.search`) and, when present, `latents.json` (top contexts).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from saeforge.interpret.index import index_path, search
from saeforge.serve.saes import RequestError, ServedSAE, check_latent


def load_labels(index_dir: Path) -> dict[int, str]:
    """latent -> explanation for every latent of the index that has one."""
    path = index_path(index_dir)
    if not path.is_file():
        raise ValueError(
            f"--index {index_dir}: no {path.name} there (run `saeforge interpret --out DIR` first)"
        )
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT latent, explanation FROM features WHERE explanation IS NOT NULL"
        ).fetchall()
    finally:
        con.close()
    return {int(latent): text for latent, text in rows}


def _indexed(sae: ServedSAE) -> Path:
    if sae.index is None:
        raise RequestError(
            f"SAE {sae.name!r} has no feature index: start the server with --index {sae.name}=DIR", status=404
        )
    return sae.index


def search_features(sae: ServedSAE, query: str, limit: int) -> list[dict[str, Any]]:
    try:
        hits = search(_indexed(sae), query, limit)
    except ValueError as e:
        raise RequestError(str(e), param="q") from None
    return [
        {
            "sae": sae.name,
            "latent": h.latent,
            "explanation": h.explanation,
            "density": h.density,
            "balanced_accuracy": h.balanced_accuracy,
            "top_tokens": h.top_tokens,
            "rank": h.rank,
        }
        for h in hits
    ]


def describe_latent(sae: ServedSAE, latent: int, contexts: int = 10) -> dict[str, Any]:
    """The index row of one latent plus its top contexts from latents.json (when the index folder has one)."""
    check_latent(sae, latent, "latent")
    path = index_path(_indexed(sae))
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM features WHERE latent = ?", (latent,)).fetchone()
    finally:
        con.close()
    out: dict[str, Any] = {"sae": sae.name, "latent": latent, "indexed": row is not None}
    if row is not None:
        out.update({k: row[k] for k in row.keys() if k != "latent"})
        out["unclear"] = bool(out.get("unclear"))
    out["top_contexts"] = _contexts(path.parent / "latents.json", latent, contexts)
    return out


def _contexts(latents_json: Path, latent: int, n: int) -> list[dict[str, Any]]:
    if not latents_json.is_file():
        return []
    from saeforge.interpret.records import load_interpretation

    record = load_interpretation(latents_json).by_latent().get(latent)
    if record is None:
        return []
    return [
        {"activation": c.activation, "tokens": c.tokens, "acts": c.acts, "center": c.center}
        for c in record.top[:n]
    ]
