"""Paired capture: a base and a fine-tuned model over the same contexts -> aligned stores, exactly resumable."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saeforge.activations import ActivationStore, CaptureConfig, capture, check_aligned
from saeforge.activations.paired import TokenizerMismatch
from tests.conftest import REPO, cli_env

HOOKS = ["layers.0.mlp_in", "layers.1.resid_post"]


@pytest.fixture(scope="module")
def pair(tiny_pair) -> tuple[Path, Path]:
    return tiny_pair


def _cfg(model, out, finetuned=None, **kw) -> CaptureConfig:
    args = dict(
        model=str(model),
        finetuned_model=None if finetuned is None else str(finetuned),
        hooks=HOOKS,
        data="builtin",
        tokens=600,
        out=out,
        context_size=32,
        shard_tokens=128,
        batch_size=2,
    )
    args.update(kw)
    return CaptureConfig(**args)


def _shards_equal(a: ActivationStore, b: ActivationStore, keys=None) -> None:
    assert a.num_shards == b.num_shards
    for i in range(a.num_shards):
        for k in keys or a.shard(i):
            assert torch.equal(a.shard(i)[k], b.shard(i)[k]), (a.path, i, k)


def _cli(*args):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_paired_capture_is_aligned_and_equals_single_captures(pair, tmp_path):
    base, finetuned = pair
    out = tmp_path / "paired"
    args = ["capture", "--model", base, "--model", finetuned, "--data", "builtin", "--tokens", 600]
    args += ["--context-size", 32, "--shard-tokens", 128, "--batch-size", 2, "--out", out]
    args += [a for h in HOOKS for a in ("--hook", h)]
    proc = _cli(*args)
    assert proc.exit_code == 0, proc.output
    for role in ("base", "finetuned"):
        for hook in HOOKS:
            assert f"{role}/{hook}: 600 rows" in proc.output
    stores = {(r, h): ActivationStore.open(out / r / h) for r in ("base", "finetuned") for h in HOOKS}
    check_aligned(list(stores.values()))
    assert all(s.hook == hook for (_, hook), s in stores.items())
    # Each model's stores are what a capture of that model alone writes: same contexts, same rows.
    for role, model in (("base", base), ("finetuned", finetuned)):
        single = _cfg(model, tmp_path / f"single-{role}")
        capture(single)
        for hook in HOOKS:
            _shards_equal(stores[role, hook], ActivationStore.open(single.out / hook))
    a, b = stores["base", HOOKS[1]], stores["finetuned", HOOKS[1]]
    assert not torch.equal(a.shard(0)["activations"], b.shard(0)["activations"])
    # The run card names both models with their fingerprints.
    pa, pb = a.manifest.pair, b.manifest.pair
    assert (pa.role, pb.role) == ("base", "finetuned")
    assert pa.base == pb.base == a.manifest.model and pa.finetuned == b.manifest.model
    assert pa.base.fingerprint != pa.finetuned.fingerprint
    assert a.manifest.capture["finetuned_model"] == str(finetuned) == b.manifest.capture["finetuned_model"]
    assert "already complete" in _cli(*args).output
    refused = _cli(*args[:5], "--model", base, *args[5:])
    assert refused.exit_code == 2 and "given 3 times" in refused.output


def _retokenized(model: Path, out: Path, edit) -> Path:
    """A copy of `model` whose tokenizer was changed by edit(tokenizer)."""
    from transformers import AutoTokenizer

    shutil.copytree(model, out)
    tok = AutoTokenizer.from_pretrained(out)
    edit(tok)
    tok.save_pretrained(out)
    return out


def test_tokenizers_must_agree_on_the_corpus(pair, tmp_path):
    base, _ = pair
    # A new ordinary token changes how the corpus tokenizes: refused before any row is written.
    renamed = _retokenized(base, tmp_path / "added-word", lambda t: t.add_tokens(["function"]))
    with pytest.raises(
        TokenizerMismatch, match=r"document \d+ of builtin, token \d+: the base tokenizer gives id"
    ):
        capture(_cfg(base, tmp_path / "bad", renamed))
    assert not list((tmp_path / "bad").rglob("*.safetensors"))
    # Special tokens the corpus does not use change nothing.
    special = _retokenized(
        base,
        tmp_path / "added-special",
        lambda t: t.add_special_tokens({"additional_special_tokens": ["<|tool|>"]}),
    )
    dirs = capture(_cfg(base, tmp_path / "ok", special, hooks=HOOKS[1:]))
    check_aligned([dirs[f"base/{HOOKS[1]}"], dirs[f"finetuned/{HOOKS[1]}"]])
    with pytest.raises(ValueError, match="drop_outliers cannot be used in a paired capture"):
        _cfg(base, tmp_path / "x", special, drop_outliers=3.0)


def test_chat_rows_render_with_the_finetuned_template_for_both(pair, tmp_path):
    base, finetuned = pair
    chats = tmp_path / "chats.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"How do I open file number {i}?"},
                {"role": "assistant", "content": "Use open() with a path and a mode."},
            ]
        }
        for i in range(40)
    ]
    chats.write_text("".join(json.dumps(x) + "\n" for x in lines))

    def plain_template(tok):
        tok.chat_template = "{% for m in messages %}{{ m['role'] }} says: {{ m['content'] }}\n{% endfor %}"

    plain_base = _retokenized(base, tmp_path / "plain-base", plain_template)
    kw = dict(data=str(chats), hooks=HOOKS[1:], tokens=300)
    dirs = capture(_cfg(plain_base, tmp_path / "paired", finetuned, **kw))
    ft_alone = _cfg(finetuned, tmp_path / "ft", **kw)
    base_alone = _cfg(plain_base, tmp_path / "base", **kw)
    capture(ft_alone)
    capture(base_alone)
    paired_base = ActivationStore.open(dirs[f"base/{HOOKS[1]}"])
    _shards_equal(paired_base, ActivationStore.open(ft_alone.out / HOOKS[1]), ["token_ids", "positions"])
    own = ActivationStore.open(base_alone.out / HOOKS[1])
    assert not torch.equal(own.shard(0)["token_ids"], paired_base.shard(0)["token_ids"])


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import importlib
cap = importlib.import_module("saeforge.activations.hook_writer")
from saeforge.activations import CaptureConfig, capture
cfg = CaptureConfig.model_validate_json(sys.argv[1])
real = cap.write_shard
def write_shard(path, tensors):
    # Killed while writing the fine-tuned store's third shard: the base store has committed one shard more.
    if "finetuned" in str(path) and path.name.endswith("000002.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, tensors)
cap.write_shard = write_shard
capture(cfg)
"""


def test_sigkill_between_the_two_models_then_resume_is_identical(pair, tmp_path):
    base, finetuned = pair
    ref = _cfg(base, tmp_path / "ref", finetuned, hooks=HOOKS[1:], shard_tokens=96)
    capture(ref)
    cfg = ref.model_copy(update={"out": tmp_path / "out"})
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, cfg.model_dump_json()],
        capture_output=True,
        text=True,
        env=cli_env(OMP_NUM_THREADS="1"),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    progress = {
        role: json.loads((cfg.out / role / HOOKS[1] / "manifest.json").read_text())["progress"]
        for role in ("base", "finetuned")
    }
    assert len(progress["base"]["shards"]) == 3 and len(progress["finetuned"]["shards"]) == 2

    capture(cfg)

    for role in ("base", "finetuned"):
        want, got = (
            ActivationStore.open(ref.out / role / HOOKS[1]),
            ActivationStore.open(cfg.out / role / HOOKS[1]),
        )
        assert [s.model_dump() for s in got.manifest.shards] == [s.model_dump() for s in want.manifest.shards]
        _shards_equal(want, got)
        assert got.manifest.stats == want.manifest.stats and got.manifest.complete
