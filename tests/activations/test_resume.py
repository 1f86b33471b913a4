"""SIGKILL mid-capture, rerun: the finished store is identical, shard for shard and row for row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch

from saeforge.activations import ActivationStore, capture
from tests.conftest import REPO, cli_env

SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from saeforge.activations import CaptureConfig, capture
cfg = CaptureConfig.model_validate_json(sys.argv[1])
manifest = cfg.out / cfg.hooks[0] / "manifest.json"
def progress(done, total):
    if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
        print("READY", flush=True)
        time.sleep(600)
capture(cfg, progress=progress)
"""


def test_sigkill_then_resume_is_identical(reference_capture, tmp_path):
    cfg = reference_capture.model_copy(update={"out": tmp_path / "out"})
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, cfg.model_dump_json()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(OMP_NUM_THREADS="1"),
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    hook_dir = cfg.out / cfg.hooks[0]
    partial = json.loads((hook_dir / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) >= 2
    # What a kill leaves is a consistent (if short) store: every listed shard is whole and hashed.
    assert ActivationStore.open(hook_dir).verify() == []
    stray = hook_dir / ".shard-000-000009.safetensors.tmp-99999"
    stray.write_bytes(b"half a shard")

    capture(cfg)

    assert not stray.exists()
    for hook in cfg.hooks:
        ref = ActivationStore.open(reference_capture.out / hook)
        got = ActivationStore.open(cfg.out / hook)
        assert [s.model_dump() for s in got.manifest.shards] == [s.model_dump() for s in ref.manifest.shards]
        for i in range(ref.num_shards):
            a, b = ref.shard(i), got.shard(i)
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (hook, i, k)
        assert got.manifest.stats == ref.manifest.stats
        assert got.manifest.tokens == ref.manifest.tokens and got.manifest.complete
