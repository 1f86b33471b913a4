"""The capture, plan and torchrun paths through the real CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from saeforge.activations import ActivationStore
from tests.conftest import REPO, cli_env


def _args(cfg, out):
    args = [
        "--model",
        cfg.model,
        "--data",
        "builtin",
        "--tokens",
        cfg.tokens,
        "--context-size",
        cfg.context_size,
    ]
    args += ["--shard-tokens", cfg.shard_tokens, "--batch-size", cfg.batch_size, "--out", out]
    for h in cfg.hooks:
        args += ["--hook", h]
    return [str(a) for a in args]


def _rows(store: ActivationStore) -> dict[str, torch.Tensor]:
    shards = [store.shard(i) for i in range(store.num_shards)]
    rows = {k: torch.cat([s[k] for s in shards]) for k in ("activations", "token_ids", "positions")}
    key = rows["positions"][:, 0] * 100_000 + rows["positions"][:, 1]
    order = torch.argsort(key)
    return {k: v[order] for k, v in rows.items()}


def test_cli_capture_matches_library_and_says_complete(reference_capture, tmp_path, cli):
    out = tmp_path / "cli"
    first = cli("capture", *_args(reference_capture, out), OMP_NUM_THREADS="1")
    assert "1,500 rows x d_in 64" in first.stdout
    for hook in reference_capture.hooks:
        ref = ActivationStore.open(reference_capture.out / hook).manifest.shards
        assert ActivationStore.open(out / hook).manifest.shards == ref
    again = cli("capture", *_args(reference_capture, out))
    assert "already complete" in again.stdout
    bad = cli("capture", *_args(reference_capture, tmp_path / "x"), "--dtype", "float8", check=False)
    assert bad.returncode == 2 and "--dtype" in bad.stderr


def test_torchrun_two_processes_one_manifest_same_rows(reference_capture, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "saeforge", "capture", *_args(reference_capture, out)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for hook in reference_capture.hooks:
        assert sorted(p.name for p in (out / hook).glob("*.json")) == ["manifest.json"]
        store = ActivationStore.open(out / hook, verify="now")
        ranks = {s.path.split("-")[1] for s in store.manifest.shards}
        assert ranks == {"000", "001"} and store.manifest.complete
        ref = ActivationStore.open(reference_capture.out / hook)
        got, want = _rows(store), _rows(ref)
        assert torch.equal(got["positions"], want["positions"])
        assert torch.equal(got["token_ids"], want["token_ids"])
        torch.testing.assert_close(got["activations"], want["activations"], rtol=1e-6, atol=1e-6)
        assert store.manifest.tokens == ref.manifest.tokens
        assert store.stats.count == ref.stats.count
        assert store.stats.mean_sq_norm == pytest.approx(ref.stats.mean_sq_norm, rel=1e-9)
        for s in range(3):
            assert torch.equal(store.context(s), ref.context(s))


def test_plan_prints_disk_memory_and_time(gpt2, cli, tmp_path):
    res = cli(
        "plan",
        "--model",
        gpt2,
        "--hook",
        "layers.1.resid_post",
        "--tokens",
        "1000000",
        "--dtype",
        "bfloat16",
        "--expansion-factor",
        "8",
        "--context-size",
        "32",
        "--out",
        tmp_path,
    )
    out = res.stdout
    # d_in 64: a row is 64 * 2 bytes + 32 bytes of token id, position and context = 160 bytes.
    assert "d_in 64" in out and "d_sae 512 (8x)" in out
    assert f"store on disk      {1_000_000 * 160 / 2**20:.1f} MiB" in out
    params = 2 * 64 * 512 + 512 + 64
    assert f"{params:,} float32 parameters" in out and f"{params * 16 / 2**20:.1f} MiB" in out
    assert "capture time" in out and "tokens/s forward" in out and "training time" in out and "fits" in out


def test_cli_capture_takes_builtin_for_the_demo_minilm(tmp_path, cli):
    """`--model builtin` names the demo MiniLM, as `model: builtin` does in a run config; the manifest records
    the resolved directory."""
    from saeforge.models import builtin_example_model

    out = tmp_path / "cap"
    args = ["--model", "builtin", "--data", "builtin:heldout", "--hook", "layers.3.resid_post"]
    done = cli(
        "capture", *args, "--tokens", "300", "--context-size", "32", "--out", str(out), OMP_NUM_THREADS="1"
    )
    assert "300 rows x d_in 384" in done.stdout
    manifest = ActivationStore.open(out / "layers.3.resid_post").manifest
    assert manifest.model.path == str(builtin_example_model())
