"""The built-in corpus: enough text, deterministic, disjoint train/held-out split."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from saeforge.text import builtin, builtin_documents, read_texts
from saeforge.text.builtin import MIN_CHARS


def test_builtin_splits_are_disjoint_and_cover_the_corpus():
    train, heldout = builtin_documents("train"), builtin_documents("heldout")
    assert set(train).isdisjoint(heldout)
    assert list(read_texts("builtin")) == list(train) + list(heldout)
    assert list(read_texts("builtin:train")) == list(train)
    assert list(read_texts("builtin", split="heldout")) == list(heldout)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    # The split rule, recomputed independently from each document's text.
    assert all(hashlib.sha256(d.encode()).digest()[0] < 26 for d in heldout)
    assert all(hashlib.sha256(d.encode()).digest()[0] >= 26 for d in train)


def test_builtin_is_cleaned_english_of_useful_size():
    docs = builtin_documents()
    assert len(set(docs)) == len(docs)
    assert all(len(d) >= MIN_CHARS and "  " not in d and "\n" not in d and "*****" not in d for d in docs)
    assert sum(map(len, builtin_documents("train"))) > 1_000_000
    text = " ".join(docs)
    for word in ("function", "return", "exception", "string", "module"):
        assert text.count(f" {word} ") > 100


def test_builtin_is_identical_in_a_fresh_process():
    # Loads builtin.py alone (no torch import) under another string-hash seed.
    code = (
        "import hashlib, importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('builtin_corpus', sys.argv[1])\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(hashlib.sha256('\\x00'.join(mod.builtin_documents('train')).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, builtin.__file__],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    here = hashlib.sha256("\x00".join(builtin_documents("train")).encode()).hexdigest()
    assert out.stdout.strip() == here
