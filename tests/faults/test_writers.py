"""One writer per output folder: a second process fails at once naming the holder; kill -9 leaves no lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from saeforge.lock import LOCK_FILE, FolderInUse, one_writer
from tests.conftest import REPO, cli_env

HOLDER = """
import sys
from saeforge.lock import one_writer
with one_writer(sys.argv[1], "holder-test"):
    print("HOLDING", flush=True)
    sys.stdin.readline()
print("RELEASED", flush=True)
"""


@pytest.fixture
def holder():
    """holder(folder) -> a live process holding folder's writer lock (stdin closes it, kill -9 kills it)."""
    procs = []

    def start(folder):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=REPO,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "HOLDING", proc.stderr.read()
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_second_writer_fails_naming_the_holder_and_kill9_frees_it(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out)
    with pytest.raises(FolderInUse) as e:
        with one_writer(out, "second"):
            pytest.fail("entered a folder another process holds")
    msg = str(e.value)
    assert str(out) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
    assert "holder-test" in msg and "started 20" in msg and "another --out" in msg
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_FILE).exists()  # the dead holder's file is left behind, but holds no lock
    with one_writer(out, "resume"):
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "resume"
    assert not (out / LOCK_FILE).exists()


def test_released_lock_is_taken_again_and_reentry_is_allowed(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out)
    proc.communicate("\n")
    assert proc.returncode == 0
    with one_writer(out, "outer"):
        with one_writer(out, "inner"):  # `run` holds the folder while its stages hold theirs
            pass
        assert (out / LOCK_FILE).exists()


def test_refused_run_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="bad config"):
        with one_writer(out, "train"):
            raise RuntimeError("bad config")
    assert not out.exists()


@pytest.mark.parametrize("command", ["capture", "train", "interpret", "run"])
def test_every_writing_command_refuses_a_held_folder(
    command, tmp_path, holder, tiny_model, store_tools, acts
):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    out = tmp_path / "out"
    store = store_tools.write_store(tmp_path / "store", acts(64, 8))
    model = tiny_model("gpt2")
    run_yaml = tmp_path / "run.yaml"
    sae_spec = {"name": "t", "architecture": "topk", "k": 2, "expansion_factor": 2}
    run_cfg = {"model": str(model), "data": "builtin", "hooks": ["layers.1.resid_post"], "out": str(out)}
    run_cfg["train"] = {"tokens": 64, "batch_size": 32, "saes": [sae_spec]}
    run_cfg["capture"] = {"tokens": 64}
    run_yaml.write_text(yaml.safe_dump(run_cfg))
    args = {
        "capture": ["--model", model, "--hook", "layers.1.resid_post", "--data", "builtin", "--tokens", 64],
        "train": [
            "--activations",
            store,
            "--architecture",
            "topk",
            "--k",
            2,
            "--d-sae",
            16,
            "--tokens",
            64,
            "--batch-size",
            32,
        ],
        "interpret": ["--sae", tmp_path / "sae", "--activations", store, "--latents", 2],
        "run": [run_yaml],
    }[command]
    proc = holder(out)
    _register()
    result = CliRunner().invoke(app, [command, *map(str, args), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"pid {proc.pid}" in result.output and str(out) in result.output
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing was written beside the lock
