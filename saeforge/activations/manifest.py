"""The manifest of an activation store: `manifest.json`, the run card of the data.

Only `d_in`, `dtype`, `hook` and `shards` ([{"path", "rows", "sha256"}]) are required, so stores written by
other tools load; everything else is saeforge's record of how the data was made (see docs/formats.md).

A shard path is a normalised relative path (no `..`, `.`, `\\` or leading `/`), refused when read otherwise,
so a manifest cannot name a file outside its store (symlinks are checked against the directory by the store).
From format version 2 the manifest also records `total_rows` and `shards_digest`, the sha256 of its shard list
(each shard's path, rows and sha256, in order): a shard entry deleted, duplicated or reordered, hence a row lost
or repeated, no longer matches. `write` fills both in, so every writer records them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from saeforge.atomic import write_bytes
from saeforge.dtypes import StorageDtype
from saeforge.errors import format_validation_error

# 2: `total_rows` and `shards_digest` are written (and then required); 1 and unversioned stores load without.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """manifest.json is not valid JSON or not a manifest; the message names the file and the problem."""


def check_shard_path(path: str) -> str:
    """Returns `path` if it is a normalised relative path inside its store; raises ValueError naming it."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or posixpath.normpath(path) != path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(
            f"shard path {path!r} is not a normalised relative path inside the store directory (no '..', "
            "no leading '/', no '.' parts); the manifest may have been edited or written by a broken tool"
        )
    return path


def shards_digest(shards: list[ShardEntry]) -> str:
    """sha256 hex digest over the shard list: one JSON line [path, rows, sha256] per shard, in order."""
    digest = hashlib.sha256()
    for s in shards:
        digest.update(json.dumps([s.path, s.rows, s.sha256]).encode() + b"\n")
    return digest.hexdigest()


class _Lenient(BaseModel):
    # A file format, not a config: fields added by other tools or later versions are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class ShardEntry(_Lenient):
    path: str = Field(description="shard file name, relative to the store directory")
    rows: int = Field(ge=0, description="number of activation rows in the shard")
    sha256: str | None = Field(default=None, description="sha256 hex digest of the whole file")

    @field_validator("path")
    @classmethod
    def _inside_store(cls, v: str) -> str:
        return check_shard_path(v)


class Stats(_Lenient):
    """Normalisation statistics of all rows, accumulated in float64 during capture."""

    mean: list[float] = Field(description="mean activation vector [d_in]")
    mean_sq_norm: float = Field(description="E||x||^2")
    mean_norm: float | None = Field(default=None, description="E||x||")
    count: int = Field(description="number of rows the statistics cover")


class ModelCard(_Lenient):
    path: str
    fingerprint: str | None = None
    family: str | None = None
    kind: str | None = None


class PairCard(_Lenient):
    """Paired capture: which of the two models this store holds, and both models (docs/formats.md)."""

    role: Literal["base", "finetuned"]
    base: ModelCard
    finetuned: ModelCard


class CorpusCard(_Lenient):
    source: str
    weight: float = 1.0
    contexts: int = Field(default=0, description="contexts drawn from this source")
    tokens: int = Field(default=0, description="tokens (special included) in those contexts")


class TokenCounts(_Lenient):
    requested: int = Field(description="--tokens: non-special corpus tokens to capture")
    seen: int = Field(default=0, description="non-special tokens read from the corpus (rows before dropping)")
    special_excluded: int = Field(default=0, description="special tokens (BOS/EOS/PAD/...) not captured")
    outliers_dropped: int = Field(default=0, description="rows dropped by the outlier-norm filter")
    rows: int = Field(default=0, description="rows in the store")


class RankProgress(_Lenient):
    """Resume state of one capture process for one hook, as of its last committed shard.

    Positions count candidate rows (non-special tokens inside the token budget), in the order of the global
    batch grid, so they do not depend on which rows the outlier filter kept.
    """

    rank: int = 0
    world_size: int = 1
    next_batch: int = 0
    next_candidate: int = Field(default=0, description="candidate rows of `next_batch` already committed")
    shards: list[ShardEntry] = Field(default_factory=list)
    sum: list[float] | None = Field(default=None, description="float64 sum of committed rows [d_in]")
    sum_sq_norm: float = 0.0
    sum_norm: float = 0.0
    count: int = 0
    outliers_dropped: int = 0


class Manifest(_Lenient):
    d_in: int = Field(gt=0)
    dtype: StorageDtype
    hook: str
    shards: list[ShardEntry]
    format_version: int | None = None
    total_rows: int | None = Field(default=None, description="rows of all shards (format version 2)")
    shards_digest: str | None = Field(
        default=None, description="sha256 over the shard list: [path, rows, sha256] per shard, in order"
    )
    complete: bool = True
    exhausted: bool = Field(default=False, description="the corpus ended before --tokens were captured")
    stats: Stats | None = None
    model: ModelCard | None = None
    tokenizer: str | None = None
    pair: PairCard | None = Field(
        default=None, description="paired capture: this store's role and both models"
    )
    context_size: int | None = None
    prepend_bos: bool | None = None
    exclude_special: bool | None = None
    corpus: list[CorpusCard] = Field(default_factory=list)
    preprocessing: str | None = None
    outlier_threshold: float | None = None
    tokens: TokenCounts | None = None
    contexts: Literal["shard", "none"] = Field(
        default="none", description="'shard': each shard holds `contexts` + `context_ids` of its sequences"
    )
    capture: dict | None = Field(default=None, description="the capture settings, checked on resume")
    progress: RankProgress | None = Field(default=None, description="resume state while incomplete")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Reads and validates `path`; raises ManifestError naming the file and what is wrong."""
        path = Path(path)
        try:
            raw = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(
                f"{path} is not valid JSON ({e}): the store's manifest is damaged. Restore it, or recapture "
                "the store into a new --out"
            ) from None
        if not isinstance(raw, dict):
            raise ManifestError(f"{path} holds a JSON {type(raw).__name__}, not a manifest object")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ManifestError(format_validation_error(e, f"manifest {path}")) from None

    def write(self, path: Path) -> None:
        """Writes atomically (temp file, fsync, rename), with `total_rows` and `shards_digest` filled in."""
        sealed = self.model_copy(
            update={"total_rows": self.num_rows, "shards_digest": shards_digest(self.shards)}
        )
        write_bytes(Path(path), (sealed.model_dump_json(indent=1, exclude_none=True) + "\n").encode())

    def list_problems(self) -> list[str]:
        """What is wrong with the shard list itself (duplicates, a row count or digest that does not match it);
        [] when sound. A manifest before format version 2 has no digest to check."""
        problems = []
        seen: set[str] = set()
        for i, s in enumerate(self.shards):
            if s.path in seen:
                problems.append(f"shard {i} ({s.path}) is listed twice")
            seen.add(s.path)
        versioned = (self.format_version or 0) >= 2
        if self.total_rows is None and versioned:
            problems.append("no total_rows (required from format version 2)")
        elif self.total_rows is not None and self.total_rows != self.num_rows:
            problems.append(f"total_rows is {self.total_rows} but the shards hold {self.num_rows} rows")
        if self.shards_digest is None and versioned:
            problems.append("no shards_digest (required from format version 2)")
        elif self.shards_digest is not None and self.shards_digest != shards_digest(self.shards):
            problems.append(
                "shards_digest does not match the shard list (a shard entry was deleted, duplicated, reordered "
                "or edited)"
            )
        return problems

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)
