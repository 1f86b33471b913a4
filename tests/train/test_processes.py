"""The trainer as separate processes: the CLI on a store, kill -9 and SIGTERM followed by --resume (bit-identical
weights), and data-parallel training under torch.distributed.run with gloo."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _support import SyntheticSource
from safetensors.torch import load_file

from saeforge.activations.writer import write_store
from saeforge.sae import load_sae
from saeforge.train import TrainConfig, train
from saeforge.train.checkpoint import latest_checkpoint
from tests.conftest import cli_env, run_cli

D_IN, B = 16, 64
WORKER = Path(__file__).with_name("_support.py")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "acts"
    src = SyntheticSource(D_IN, B)
    write_store(
        path, torch.cat([src.global_batch(i) for i in range(24)]), hook="layers.1.resid_post", shard_rows=256
    )
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(
        model={"path": "/models/tiny-gpt2", "fingerprint": "sha256:0123abcd"},
        context_size=32,
        corpus=[{"source": "builtin:train", "tokens": 1536}],
        preprocessing="BOS prepended; special tokens excluded",
    )
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_cli_flags_train_one_sae_with_its_run_card(store, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--activations", store, "--architecture", "topk", "--k", "4", "--d-sae", "64", "--tokens", "1280",
        "--batch-size", "64", "--checkpoint-every", "5", "--seed", "3", "--out", out,
    )  # fmt: skip
    assert "topk: FVU" in proc.stdout and str(out / "topk") in proc.stdout
    for column in ("1280/1280 tokens", "/s", "loss", "mse", "auxk", "L0", "FVU", "dead %", "lr"):
        assert column in proc.stderr  # the progress bar and metric table
    sae = load_sae(out / "topk")
    assert sae.encode(torch.randn(5, D_IN)).shape == (5, 64)
    card = json.loads((out / "topk" / "cfg.json").read_text())["metadata"]
    assert (card["model"], card["model_fingerprint"], card["saeforge_hook_name"]) == (
        "/models/tiny-gpt2", "sha256:0123abcd", "layers.1.resid_post"
    )  # fmt: skip
    assert card["hook_name"] == "blocks.1.hook_resid_post"  # SAELens attaches at the TransformerLens name
    assert card["context_size"] == 32 and card["data"]["corpus"][0]["source"] == "builtin:train"
    assert card["data"]["preprocessing"].startswith("BOS") and card["sparsity"]["k"] == 4
    assert card["training"]["steps"] == 20 and card["training"]["data_seed"] == 3
    assert card["data"]["epochs"] == pytest.approx(1280 / 1536)
    run_card = json.loads((out / "run_card.json").read_text())["topk"]
    assert run_card["hook_name"] == card["saeforge_hook_name"]
    assert {k: v for k, v in run_card.items() if k != "hook_name"}.items() <= card.items()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_000000010", "step_000000015", "step_000000020"]


def _invoke(*args):
    """The CLI in this process (typer's runner): for the paths that need no separate interpreter."""
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_config_sweep_overrides_and_resume_rules(store, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(
                activations=str(store),
                tokens=640,
                batch_size=64,
                out=str(tmp_path / "ignored"),
                log_every=5,
                saes=[
                    dict(name="tk", architecture="topk", k=4, expansion_factor=4),
                    dict(name="jr", architecture="jumprelu", d_sae=32, target_l0=6),
                ],
            )  # fmt: skip
        )
    )
    out = tmp_path / "run"
    first = _invoke("train", config, "--out", out)
    assert first.exit_code == 0, first.output
    assert "tk: FVU" in first.output and "jr: FVU" in first.output
    assert not (tmp_path / "ignored").exists()
    assert load_sae(out / "tk").d_sae == 64 and load_sae(out / "jr").cfg.architecture == "jumprelu"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10] and set(records[-1]["saes"]) == {"tk", "jr"}

    again = _invoke("train", config, "--out", out)
    assert again.exit_code == 2 and "already holds a run" in again.output and "--resume" in again.output
    before = (out / "tk" / "sae_weights.safetensors").read_bytes()
    resumed = _invoke(
        "train", config, "--out", out, "--resume"
    )  # already complete: re-exports the same weights
    assert resumed.exit_code == 0 and (out / "tk" / "sae_weights.safetensors").read_bytes() == before

    mixed = _invoke("train", config, "--k", "3")
    assert mixed.exit_code == 2 and "--k cannot be combined with CONFIG" in mixed.output


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--architecture", "topkk", "--k", "4"],
            "saes[0] (topkk).architecture: unknown architecture 'topkk'",
        ),
        (["--architecture", "topk", "--k", "40", "--d-sae", "32"], "saes[0] (topk).k: k=40 exceeds d_sae=32"),
        (["--architecture", "topk"], "missing --activations, --out"),
    ],
)
def test_cli_config_errors_before_any_work(store, tmp_path, args, message):
    if "missing" not in message:
        args = [
            "--activations",
            store,
            *args,
            "--tokens",
            "640",
            "--batch-size",
            "64",
            "--out",
            tmp_path / "run",
        ]
    result = _invoke("train", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_cli_exits_on_sigterm_within_seconds_with_a_checkpoint(store, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "saeforge", "train", "--activations", str(store), "--architecture", "topk",
           "--k", "4", "--d-sae", "64", "--tokens", str(64 * 10**6), "--batch-size", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)  # a hang guard; the run would take hours unstopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM after step" in stderr and "--resume" in stderr
    step = int(stderr.split("stopped by SIGTERM after step ")[1].split()[0])
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt.name == f"step_{step:09d}"
    assert json.loads((ckpt / "state.json").read_text())["loaders"][0]["position"] == step % 24


def _worker_config(out: Path, **over) -> dict:
    cfg = dict(
        tokens=B * 16, batch_size=B, out=str(out), checkpoint_every=5, log_every=4, device="cpu",
        saes=[dict(name="tk", architecture="topk", k=4, d_sae=64, k_aux=8),
              dict(name="bt", architecture="batchtopk", k=4, d_sae=48)],
        dead_tokens=B * 3,
    )  # fmt: skip
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(TrainConfig.parse(_worker_config(out)), source=SyntheticSource(D_IN, B))
    return out


def _spawn(tmp_path: Path, name: str, **spec) -> subprocess.Popen:
    spec.setdefault("source", {"d_in": D_IN, "batch_size": B})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, str(WORKER), str(path)], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _assert_same_run(a: Path, b: Path) -> None:
    sa = load_file(str(latest_checkpoint(a / "checkpoints") / "state.safetensors"))
    sb = load_file(str(latest_checkpoint(b / "checkpoints") / "state.safetensors"))
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for name in ("tk", "bt"):
        wa = load_file(str(a / name / "sae_weights.safetensors"))
        wb = load_file(str(b / name / "sae_weights.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_9_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(tmp_path, "killed", config=_worker_config(out), action="block", action_at=8)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "BLOCKED", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(out / "checkpoints").name == "step_000000005"
    assert [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [4, 8]

    resumed = _spawn(tmp_path, "resumed", config=_worker_config(out, resume=True))
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and stdout.startswith("DONE"), stderr
    _assert_same_run(reference, out)
    assert [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [4, 8, 12, 16]


def test_sigterm_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(tmp_path, "term", config=_worker_config(out), action="sigterm", action_at=7)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "INTERRUPTED stopped by SIGTERM after step 7 of 16" in stdout, stderr
    assert latest_checkpoint(out / "checkpoints").name == "step_000000007"

    resumed = _spawn(tmp_path, "resumed", config=_worker_config(out, resume=True))
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    _assert_same_run(reference, out)


def test_two_gloo_ranks_match_one_process(store, tmp_path):
    """torchrun -m saeforge train on 2 CPU ranks against train() in this process, same global batches, one SAE
    of every architecture."""
    config = dict(
        activations=str(store), tokens=B * 10, batch_size=B, log_every=5, device="cpu", dead_tokens=B * 2,
        saes=[dict(name="tk", architecture="topk", k=4, d_sae=64, k_aux=8),
              dict(name="bt", architecture="batchtopk", k=4, d_sae=48),
              dict(name="bs", architecture="batchtopk", k=4, d_sae=256, options={"screen": "bf16"}),
              dict(name="jr", architecture="jumprelu", d_sae=32, target_l0=6),
              dict(name="mt", architecture="matryoshka", k=4, d_sae=32, group_sizes=[8, 8, 16]),
              dict(name="gt", architecture="gated", d_sae=32, target_l0=6),
              dict(name="st", architecture="standard", d_sae=32, sparsity_coefficient=0.5)],
    )  # fmt: skip
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump({**config, "out": str(tmp_path / "two")}))
    env = cli_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "saeforge", "train", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = train(TrainConfig.parse({**config, "out": str(tmp_path / "one")}))

    two_card = json.loads((tmp_path / "two" / "run_card.json").read_text())
    assert (
        two_card["tk"]["training"]["world_size"] == 2
        and two_card["tk"]["training"]["batch_size_per_rank"] == 32
    )
    steps = [json.loads(s)["step"] for s in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]  # written once, by rank 0
    for r in one:
        w1 = load_file(str(r.path / "sae_weights.safetensors"))
        w2 = load_file(str(tmp_path / "two" / r.name / "sae_weights.safetensors"))
        assert w1.keys() == w2.keys()
        for k in w1:
            rel = (w1[k] - w2[k]).norm() / w1[k].norm().clamp_min(1e-12)
            assert rel < 1e-3, (r.name, k, float(rel))  # the issue asks for 1%; measured ~1e-7
        assert two_card[r.name]["final_metrics"]["l0"] == pytest.approx(r.metrics["l0"], rel=0.05)


def test_sigterm_to_torchrun_saves_every_ranks_state(store, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "saeforge",
           "train", "--activations", str(store), "--architecture", "batchtopk", "--k", "4", "--d-sae", "32",
           "--tokens", str(64 * 10**6), "--batch-size", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=cli_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stderr.count("stopped by SIGTERM after step") == 1, stderr  # printed by rank 0 only
    step = int(stderr.split("stopped by SIGTERM after step ")[1].split()[0])
    meta = json.loads((latest_checkpoint(out / "checkpoints") / "state.json").read_text())
    assert meta["step"] == step and meta["world_size"] == 2
    assert [s["position"] for s in meta["loaders"]] == [step % 24, step % 24]
    tensors = load_file(str(latest_checkpoint(out / "checkpoints") / "state.safetensors"))
    assert {"rng/cpu/0", "rng/cpu/1"} <= tensors.keys()


_AVERAGE = """
import torch
from saeforge.distributed import DistContext

ctx = DistContext.from_env(torch.device("cpu"))
r = ctx.rank
w_col = torch.nn.Parameter(torch.zeros(6, 5).t())                  # column-major [5, 6], as W_enc is stored
w_row = torch.nn.Parameter(torch.zeros(4, 3))
b = torch.nn.Parameter(torch.zeros(7))
w_col.grad = (torch.arange(30.0).reshape(6, 5) * (r + 1)).t()     # same layout as its parameter
w_row.grad = torch.full((4, 3), float(r + 1))                     # b.grad stays None on rank 0 only
if r == 1:
    b.grad = torch.arange(7.0)
ptr, stride = w_col.grad.data_ptr(), w_col.grad.stride()
ctx.average_gradients([w_col, w_row, b])
assert w_col.grad.data_ptr() == ptr and w_col.grad.stride() == stride, "reduced out of place or relaid"
assert torch.equal(w_col.grad, (torch.arange(30.0).reshape(6, 5) * 1.5).t())    # (1 + 2) / 2
assert torch.equal(w_row.grad, torch.full((4, 3), 1.5))
assert torch.equal(b.grad, torch.arange(7.0) / 2)                 # rank 0's missing gradient counted as zeros
open(f"ok{r}", "w").close()  # a file per rank: the ranks' stdout may interleave
ctx.close()
"""


def test_average_gradients_is_in_place_and_keeps_each_layout(tmp_path):
    """DDP's gradient mean: equal to the naive mean over 2 gloo ranks, written into each gradient's own
    storage, so a column-major gradient stays column-major (no per-step copy for the optimiser)."""
    script = tmp_path / "average.py"
    script.write_text(_AVERAGE)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(
        cmd, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()
