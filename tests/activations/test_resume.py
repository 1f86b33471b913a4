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
manifests = [cfg.out / h / "manifest.json" for h in cfg.hooks]
def progress(done, total):
    # Wait for a moment when the hooks' stores are committed up to different forward batches.
    if all(m.exists() for m in manifests):
        states = [json.loads(m.read_text())["progress"] for m in manifests]
        if all(s["shards"] for s in states) and len({s["next_batch"] for s in states}) > 1:
            print("READY", flush=True)
            time.sleep(600)
capture(cfg, progress=progress)
print("FINISHED WITHOUT A KILL POINT", flush=True)
"""


def test_sigkill_then_resume_is_identical(reference_capture, tmp_path):
    # Outlier dropping makes the two hooks keep different rows, so their shards end in different forward
    # batches: the resumed run must start from the earlier one and skip what the other hook committed.
    update = {"out": tmp_path / "ref", "drop_outliers": 1.1, "batch_size": 1, "shard_tokens": 64}
    ref_cfg = reference_capture.model_copy(update=update)
    capture(ref_cfg)
    cfg = ref_cfg.model_copy(update={"out": tmp_path / "out"})
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
    stray = hook_dir / ".shard-000-000009.safetensors.k1ll3d.tmp"
    stray.write_bytes(b"half a shard")

    capture(cfg)

    assert not stray.exists()
    for hook in cfg.hooks:
        ref = ActivationStore.open(ref_cfg.out / hook)
        got = ActivationStore.open(cfg.out / hook)
        assert [s.model_dump() for s in got.manifest.shards] == [s.model_dump() for s in ref.manifest.shards]
        for i in range(ref.num_shards):
            a, b = ref.shard(i), got.shard(i)
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), (hook, i, k)
        assert got.manifest.stats == ref.manifest.stats
        assert got.manifest.tokens == ref.manifest.tokens and got.manifest.complete
        assert ref.manifest.tokens.outliers_dropped > 0
    dropped = [ActivationStore.open(ref_cfg.out / h).manifest.tokens.outliers_dropped for h in cfg.hooks]
    assert dropped[0] != dropped[1]
