"""Leftovers and messages: temporaries of killed writers are swept by the next writer of the folder (not those
of a live one), pickle-only model folders are refused with the fix, no control character reaches a page."""

from __future__ import annotations

import fcntl
import os
import re

import pytest
import torch

from saeforge.atomic import atomic_path, sweep_stale
from saeforge.lock import LOCK_FILE, one_writer
from saeforge.report.format import no_controls
from saeforge.train.checkpoint import latest_checkpoint, save_checkpoint

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _killed_mid_write(path):
    """A child process that dies (os._exit, no cleanup) inside an atomic write of `path`."""
    pid = os.fork()
    if pid == 0:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a file")
            os._exit(0)
    os.waitpid(pid, 0)


def _stale(folder):
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith((".tmp-", ".old-")) or (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def test_the_next_writer_sweeps_what_killed_writers_left(tmp_path):
    out = tmp_path / "run"
    root = out / "checkpoints"
    save_checkpoint(root, 2, {"w": torch.zeros(3)}, {"step": 2}, keep=3)
    _killed_mid_write(out / "acts" / "manifest.json")
    _killed_mid_write(root / "latest")
    # a checkpoint killed before its rename, and one killed while swapping in a rewritten step
    (root / ".tmp-step_000000004-4242").mkdir()
    (root / ".tmp-step_000000004-4242" / "state.safetensors").write_bytes(b"partial")
    (root / ".old-step_000000002-4242").mkdir()
    assert len(_stale(out)) == 4
    assert (root / "latest").read_text() == "step_000000002\n"  # the killed writes changed nothing
    with one_writer(out, "test"):
        assert _stale(out) == []
    assert latest_checkpoint(root) == root / "step_000000002"
    assert (out / "acts").is_dir() and not any((out / "acts").iterdir())


def test_a_live_writers_temporaries_are_left_alone(tmp_path):
    out = tmp_path / "run"
    busy = out / "busy"
    busy.mkdir(parents=True)
    _killed_mid_write(busy / "manifest.json")
    _killed_mid_write(out / "manifest.json")
    fd = os.open(busy / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer holds busy/ (a separate open file: flock conflicts)
        removed = sweep_stale(out, LOCK_FILE)
        assert [p.parent for p in removed] == [out]
        assert len(_stale(busy)) == 1
    finally:
        os.close(fd)
    assert [p.parent for p in sweep_stale(out, LOCK_FILE)] == [busy]


def test_a_pickle_only_model_folder_is_refused_with_the_fix(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app
    from saeforge.models.loading import ModelLoadError, load_model

    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    torch.save({"w": torch.zeros(2)}, model / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was loaded"))
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.*safetensors only.*save_pretrained"):
        load_model(model)
    _register()
    args = [
        "capture",
        "--model",
        model,
        "--hook",
        "layers.0.resid_post",
        "--data",
        "builtin",
        "--tokens",
        "64",
    ]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--out", tmp_path / "c"]])
    assert result.exit_code != 0 and "pytorch_model.bin" in result.output
    assert "Traceback" not in result.output


def test_no_control_character_reaches_a_page():
    text = "tok\x00\x07\x1b[31m\x7f\x85\x9b end\ttab\nline é ✓"
    out = no_controls(text)
    assert not CONTROL.search(out)
    assert out == "tok\\x00\\x07\\x1b[31m\\x7f\\x85\\x9b end\ttab\nline é ✓"


def test_dashboard_pages_hold_no_control_characters(tmp_path):
    from saeforge.interpret.pipeline import interpret
    from saeforge.report.dashboard import write_dashboard
    from tests.interpret.helpers import identity_sae, planted_stream

    batches, tokens = planted_stream(n_seq=20)
    evil = lambda ids: [f"\x1b[2J\x07w{i}\x9b\r" for i in ids]  # noqa: E731
    result = interpret(identity_sae(8), batches, [1, 3], k=3, tokens_of=lambda s: tokens[s], decode=evil)
    result.latents[0].explanation = "bell\x07 and CSI\x9b in an explanation"
    write_dashboard(result, tmp_path / "dash")
    pages = list((tmp_path / "dash").rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not CONTROL.search(html), page
    assert "\\x07" in (tmp_path / "dash" / "index.html").read_text(encoding="utf-8")
