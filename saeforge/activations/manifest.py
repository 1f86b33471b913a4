"""The manifest of an activation store: `manifest.json`, the run card of the data.

Only `d_in`, `dtype`, `hook` and `shards` ([{"path", "rows", "sha256"}]) are required, so stores written by
other tools load; everything else is saeforge's record of how the data was made (see docs/formats.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from saeforge.atomic import write_bytes
from saeforge.dtypes import StorageDtype

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class _Lenient(BaseModel):
    # A file format, not a config: fields added by other tools or later versions are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class ShardEntry(_Lenient):
    path: str = Field(description="shard file name, relative to the store directory")
    rows: int = Field(ge=0, description="number of activation rows in the shard")
    sha256: str | None = Field(default=None, description="sha256 hex digest of the whole file")


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
    complete: bool = True
    exhausted: bool = Field(default=False, description="the corpus ended before --tokens were captured")
    stats: Stats | None = None
    model: ModelCard | None = None
    tokenizer: str | None = None
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
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); the store's manifest is damaged") from e

    def write(self, path: Path) -> None:
        """Writes atomically (temp file, fsync, rename)."""
        write_bytes(Path(path), (self.model_dump_json(indent=1, exclude_none=True) + "\n").encode())

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)
