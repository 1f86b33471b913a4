"""Shared test settings and fixtures.

Everything runs offline on CPU. Stage-specific fixtures live in each stage's own conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m saeforge` subprocess that imports this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Runs `python -m saeforge ARGS...` and returns the completed process (text output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "saeforge", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"saeforge {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli():
    """`cli("train", "--help")` runs the command in a subprocess against this checkout."""
    return run_cli


class TinyModels:
    """Builds tiny tokenizers and models on first use, once per session, under one temporary root."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def tokenizer(self, style: str) -> Path:
        from tests.tiny_models import build_tokenizer

        key = f"tokenizer-{style}"
        if key not in self._built:
            self._built[key] = build_tokenizer(self.root / key, style=style)
        return self._built[key]

    def model(self, family: str) -> Path:
        from tests.tiny_models import build_tiny_model

        key = f"model-{family}"
        if key not in self._built:
            tokenizer_dir = self.tokenizer("wordpiece" if family == "bert" else "bpe")
            self._built[key] = build_tiny_model(family, self.root / key, tokenizer_dir)
        return self._built[key]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_models) -> Path:
    """A byte-level BPE tokenizer directory (<|bos|>, <|eos|>, <|pad|>, chat template) trained on `builtin`."""
    return tiny_models.tokenizer("bpe")


@pytest.fixture(scope="session")
def tiny_wordpiece_dir(tiny_models) -> Path:
    """A BERT-style WordPiece tokenizer directory ([CLS], [SEP], [PAD], [MASK], [UNK]) trained on `builtin`."""
    return tiny_models.tokenizer("wordpiece")


@pytest.fixture(scope="session")
def tiny_model(tiny_models):
    """Factory: `tiny_model("llama")` -> local model directory (hidden size 64, 3 layers), built once per session.

    Families (tests.tiny_models.FAMILIES): gpt2, gpt_neox, llama, mistral, qwen2, qwen3, gemma2, gemma3 (causal),
    bert (encoder, WordPiece tokenizer).
    """
    return tiny_models.model


@pytest.fixture(scope="session")
def tiny_pair(tiny_models) -> tuple[Path, Path]:
    """Two tiny GPT-2s with one tokenizer and architecture and different weights (seeds 0 and 1): a stand-in
    base model and fine-tune for paired capture and model diffing."""
    from tests.tiny_models import build_tiny_model

    base = tiny_models.model("gpt2")
    finetuned = build_tiny_model(
        "gpt2", tiny_models.root / "model-gpt2-seed1", tiny_models.tokenizer("bpe"), seed=1
    )
    return base, finetuned
