"""Reading documents from local text sources.

A SOURCE is one of
- `builtin`, `builtin:train`, `builtin:heldout`: the standard library's documentation (saeforge.text.builtin);
- a `.txt` file: documents separated by blank lines;
- a `.jsonl` file: one JSON object per line with a `text` string, or a `messages` list of
  `{"role", "content"}` rendered through the tokenizer's chat template;
- a `.parquet` file: a `text` column (or `messages`);
- a directory written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (rows as for jsonl).
Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saeforge.text.builtin import SPLITS, builtin_documents

ACCEPTED_SOURCES = (
    "builtin, builtin:train or builtin:heldout; a .txt file (documents separated by blank lines); "
    "a .jsonl file (a `text` field or a `messages` list per line); a .parquet file (`text` column); "
    "or a directory written by datasets' save_to_disk"
)


class SourceError(ValueError):
    """A text source that cannot be read; the message names the problem and the accepted forms."""


def render_messages(messages: list[dict[str, Any]], tokenizer) -> str:
    """Renders a chat (`[{"role", "content"}, ...]`) to text with the tokenizer's chat template.

    A leading BOS token string is removed: `pack` adds BOS itself, and a rendered BOS would be doubled.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise SourceError(
            "this source has `messages` rows but the tokenizer has no chat template; give rows a `text` field "
            "or use a model directory whose tokenizer_config.json has a chat_template"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def _row_text(row: dict[str, Any], tokenizer, where: str) -> str:
    if isinstance(row.get("text"), str):
        return row["text"]
    if row.get("messages") is not None:
        if tokenizer is None:
            raise SourceError(f"{where}: `messages` rows need a tokenizer (read_texts(..., tokenizer=...))")
        return render_messages(list(row["messages"]), tokenizer)
    raise SourceError(
        f"{where}: a row has neither a `text` string nor a `messages` list (keys: {sorted(row)})"
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file; SourceError naming the file, the line and the fix otherwise."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if b"\x00" in raw:
                raise SourceError(
                    f"{path}:{n}: holds NUL bytes: a binary file (or UTF-16 text), not UTF-8 text; give a UTF-8 text file "
                    "(.txt, .jsonl) or a .parquet file"
                )
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(
                    f"{path}:{n}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); corpora "
                    f"are read as UTF-8: convert the file, e.g. `iconv -f latin1 -t utf-8 {path} > "
                    f"{path.with_stem(path.stem + '-utf8')}`"
                ) from None


def _read_txt(path: Path) -> Iterator[str]:
    lines: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            lines.append(line)
        elif lines:
            yield "".join(lines).strip()
            lines = []
    if lines:
        yield "".join(lines).strip()


def _read_jsonl(path: Path, tokenizer) -> Iterator[str]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SourceError(f"{path}:{n}: each line must be a JSON object with `text` or `messages`")
        yield _row_text(row, tokenizer, f"{path}:{n}")


def _read_rows(rows: Iterable[dict[str, Any]], tokenizer, where: str) -> Iterator[str]:
    for row in rows:
        yield _row_text(row, tokenizer, where)


def _check_columns(names: list[str], where: str) -> None:
    if "text" not in names and "messages" not in names:
        raise SourceError(f"{where}: needs a `text` or `messages` column; it has {names}")


def _read_parquet(path: Path, tokenizer) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    _check_columns(names, str(path))
    columns = [c for c in ("text", "messages") if c in names]
    rows = (row for batch in pf.iter_batches(columns=columns, batch_size=1024) for row in batch.to_pylist())
    return _read_rows(rows, tokenizer, str(path))


def _read_dataset_dir(path: Path, split: str | None, tokenizer) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise SourceError(f"{path}: choose a split with `split=` / `:SPLIT`; it has {sorted(ds)}")
        ds = ds[split]
    elif split is not None:
        raise SourceError(f"{path}: a single saved Dataset has no splits; drop split={split!r}")
    _check_columns(ds.column_names, str(path))
    return _read_rows(ds, tokenizer, str(path))


def _is_dataset_dir(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def read_texts(source: str | Path, split: str | None = None, tokenizer=None) -> Iterator[str]:
    """Yields the documents of SOURCE (see the module docstring), skipping empty ones.

    `split` selects "train"/"heldout" of `builtin` (same as `builtin:train`) or a split of a saved DatasetDict.
    `tokenizer` renders `messages` rows through its chat template. Fails before yielding anything when the
    source cannot be read.
    """
    text = str(source)
    if text == "builtin" or text.startswith("builtin:"):
        name, _, suffix = text.partition(":")
        if suffix and split and suffix != split:
            raise SourceError(f"{text!r} and split={split!r} disagree; give the split once")
        part = suffix or split
        if part is not None and part not in SPLITS:
            raise SourceError(
                f"unknown split {part!r} of the built-in corpus; use builtin, builtin:train or builtin:heldout"
            )
        return _nonempty(builtin_documents(part))
    path = Path(text).expanduser()
    if path.is_dir():
        if not _is_dataset_dir(path):
            raise SourceError(
                f"{path} is a directory but not one written by datasets' save_to_disk. Accepted: {ACCEPTED_SOURCES}"
            )
        return _nonempty(_read_dataset_dir(path, split, tokenizer))
    if not path.is_file():
        hint = ""
        if not path.suffix and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
            hint = " It looks like a hub dataset id; saeforge never downloads, save the data to a local file first."
        raise SourceError(f"text source {text!r} does not exist.{hint} Accepted: {ACCEPTED_SOURCES}")
    if split is not None:
        raise SourceError(f"{path}: files have no splits; drop split={split!r}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _nonempty(_read_txt(path))
    if suffix == ".jsonl":
        return _nonempty(_read_jsonl(path, tokenizer))
    if suffix == ".parquet":
        return _nonempty(_read_parquet(path, tokenizer))
    raise SourceError(f"{path}: unknown file type {suffix!r}. Accepted: {ACCEPTED_SOURCES}")


def _nonempty(docs: Iterable[str]) -> Iterator[str]:
    return (d for d in docs if d.strip())


class _TemplateLater:
    """Stands in for the tokenizer while checking a source: `messages` rows count as documents (the real
    tokenizer's chat template renders them when the source is read for work)."""

    chat_template = "applied when the source is read"
    bos_token = None

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False) -> str:
        return "\n".join(str(m.get("content", "")) for m in messages)


def check_source(source: str | Path, split: str | None = None) -> None:
    """Fails fast (SourceError) when SOURCE cannot be read or holds no document: opens it as `read_texts`
    does and reads up to its first document. Needs no torch and no tokenizer, so the CLI checks corpora
    before loading a model."""
    if next(read_texts(source, split, tokenizer=_TemplateLater()), None) is None:
        raise SourceError(
            f"text source {str(source)!r} holds no text (it is empty or every document is blank); give a "
            f"corpus with text. Accepted: {ACCEPTED_SOURCES}"
        )
