"""Model directories checked without torch: is it a local Hugging Face directory, and its fast tokenizer.

The CLI checks `--model` here before torch and transformers load (a hub id fails in well under a second); the
loader (`saeforge.models.loading`) runs the same check.
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded; the message names the problem and the fix."""


def check_model_dir(path: str | Path) -> Path:
    """The local model directory `path`; ModelLoadError naming the fix when it is a file, has no config.json,
    looks like a hub id or does not exist."""
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(
                f"model path {text!r} is a file; give the directory holding config.json and weights"
            )
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"{local} has no config.json; a model directory is what save_pretrained writes"
            )
        return local
    if _HUB_ID.fullmatch(text) and not text.startswith("."):
        raise ModelLoadError(
            f"{text!r} is not a local directory. Models must be local paths: saeforge never downloads. "
            "Copy the model to a directory first (e.g. `hf download ORG/NAME --local-dir DIR` on a machine "
            "with access) and pass that directory."
        )
    raise ModelLoadError(f"model directory {text!r} does not exist")


class FastTokenizer:
    """The model directory's `tokenizer.json` through the `tokenizers` library (no torch, no transformers),
    with the two calls argument checks need: `encode(text, add_special_tokens=False) -> ids`, `decode(ids)`."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))

    @classmethod
    def of(cls, model_dir: str | Path) -> FastTokenizer | None:
        """The fast tokenizer of `model_dir`, or None when it has no tokenizer.json (the loader decides then)."""
        path = Path(model_dir) / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)
