"""A feature index in SQLite: one row per latent, searchable by explanation text.

Table `features(latent, density, max_activation, explanation, unclear, balanced_accuracy, f1, top_tokens,
promoted)`; full-text search through an FTS5 table (`features_fts`, porter tokenizer) when the SQLite build has
FTS5, else a LIKE match on every query word. The index lives at `DIR/features.sqlite`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from saeforge.interpret.records import LatentRecord

INDEX_NAME = "features.sqlite"


@dataclass
class FeatureHit:
    """One search result."""

    latent: int
    density: float
    explanation: str | None
    balanced_accuracy: float | None
    f1: float | None
    top_tokens: str
    rank: float


def has_fts5() -> bool:
    con = sqlite3.connect(":memory:")
    try:
        con.execute("CREATE VIRTUAL TABLE t USING fts5(a)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def index_path(index_dir: Path) -> Path:
    p = Path(index_dir)
    return p if p.suffix == ".sqlite" else p / INDEX_NAME


def build_index(records: list[LatentRecord], index_dir: Path, fts: bool | None = None) -> Path:
    """Writes DIR/features.sqlite (atomically: built under a temporary name, then renamed). Returns its path."""
    path = index_path(index_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    use_fts = has_fts5() if fts is None else fts
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        con = sqlite3.connect(tmp)
        with con:
            con.execute(
                "CREATE TABLE features (latent INTEGER PRIMARY KEY, density REAL, max_activation REAL, "
                "explanation TEXT, unclear INTEGER, balanced_accuracy REAL, f1 REAL, top_tokens TEXT, "
                "promoted TEXT)"
            )
            con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            con.execute("INSERT INTO meta VALUES ('fts', ?)", ("fts5" if use_fts else "like",))
            rows = [
                (
                    r.latent,
                    r.density,
                    r.max_activation,
                    r.explanation,
                    int(r.unclear),
                    r.detection.balanced_accuracy if r.detection else None,
                    r.detection.f1 if r.detection else None,
                    " ".join(t.strip() for t in r.top_tokens(10)),
                    " ".join(t.token.strip() for t in r.promoted[:10]),
                )
                for r in records
            ]
            con.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if use_fts:
                con.execute(
                    "CREATE VIRTUAL TABLE features_fts USING fts5(explanation, top_tokens, "
                    "content='features', content_rowid='latent', tokenize='porter')"
                )
                con.execute(
                    "INSERT INTO features_fts(rowid, explanation, top_tokens) SELECT latent, "
                    "coalesce(explanation, ''), top_tokens FROM features"
                )
        con.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _words(query: str) -> list[str]:
    return re.findall(r"\w+", query.lower())


def search(index_dir: Path, query: str, limit: int = 20) -> list[FeatureHit]:
    """Latents whose explanation (or top tokens) match every word of `query`, best match first."""
    path = index_path(index_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no feature index at {path}: run `saeforge features build` or `saeforge interpret`"
        )
    words = _words(query)
    if not words:
        raise ValueError(f"query {query!r} has no words to search for")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        mode = con.execute("SELECT value FROM meta WHERE key = 'fts'").fetchone()[0]
        cols = "f.latent, f.density, f.explanation, f.balanced_accuracy, f.f1, f.top_tokens"
        if mode == "fts5":
            match = " AND ".join(f'"{w}"*' for w in words)
            rows = con.execute(
                f"SELECT {cols}, bm25(features_fts) AS rank FROM features_fts JOIN features f "
                "ON f.latent = features_fts.rowid WHERE features_fts MATCH ? ORDER BY rank LIMIT ?",
                (match, limit),
            ).fetchall()
        else:
            where = " AND ".join(
                "(lower(coalesce(f.explanation, '')) LIKE ? OR lower(f.top_tokens) LIKE ?)" for _ in words
            )
            args = [a for w in words for a in (f"%{w}%", f"%{w}%")]
            rows = con.execute(
                f"SELECT {cols}, -coalesce(f.balanced_accuracy, 0) AS rank FROM features f WHERE {where} "
                "ORDER BY rank, f.latent LIMIT ?",
                (*args, limit),
            ).fetchall()
    finally:
        con.close()
    return [FeatureHit(*row) for row in rows]
