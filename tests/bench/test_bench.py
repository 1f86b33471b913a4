"""The benchmark harness runs and writes sane JSON (`python -m bench --quick`); no speed is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bench import harness
from bench.report import phase_floors
from tests.conftest import REPO, cli_env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--archs", "topk,standard"]
    cmd += ["--sections", "training,phases,adam,memory,loop"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_quick_run_prints_tables_and_writes_json(quick_run):
    stdout, res = quick_run
    for title in (
        "Floors measured",
        "Training steps",
        "Phases of a saeforge topk step",
        "Adam step",
        "Peak memory",
    ):
        assert title in stdout
    assert res["machine"]["torch_threads"] >= 1 and res["machine"]["cpu_count"] >= 1
    floors = res["floors"]["quick"]
    assert floors["gemm"]["gflops"] > 0 and floors["copy"]["gbytes_per_s"] > 0


def test_training_rows_cover_both_implementations(quick_run):
    _, res = quick_run
    seen = {(r["arch"], r["impl"], r["adam"]) for r in res["training"]}
    assert {
        ("topk", "saeforge", "saeforge"),
        ("topk", "plain", "torch"),
        ("topk", "saeforge", "torch"),
    } <= seen
    assert {("standard", "saeforge", "saeforge"), ("standard", "plain", "torch")} <= seen
    for r in res["training"]:
        st = r["step"]
        assert 0 < st["min"] <= st["median"] <= st["max"] and st["n"] == 2
        assert math.isclose(r["tokens_per_s"], 256 / st["median"], rel_tol=1e-9)


def test_phases_split_the_step(quick_run):
    _, res = quick_run
    (topk,) = res["phases"]
    phases = topk["phases"]
    # the encoder's pre-activations come from the dense fp32 GEMM or, where `screen: auto` takes it, the bf16 screen
    from saeforge.sae.training import _native_bf16

    encoder = "bf16 screen" if _native_bf16(torch.device("cpu")) else "encoder matmul"
    assert encoder in phases and not ({"bf16 screen", "encoder matmul"} - {encoder}) & set(phases)
    for name in (encoder, "top-k selection", "sparse decode", "backward", "optimizer"):
        assert phases[name] > 0, name
    # how the instrumented total compares with the plain timed step is a figure for docs/benchmarks.md: a
    # ratio of two timings depends on the machine's load, so it is not asserted here
    assert {"forward (other)", "renormalise + zero_grad"} <= set(phases)


def test_memory_and_loop_sections(quick_run):
    _, res = quick_run
    (mem,) = res["memory"]
    assert mem["peak_rss_bytes"] >= mem["baseline_rss_bytes"] > mem["weights_and_adam_bytes"] > 0
    loop = res["loop"]
    assert loop["loop_tokens_per_s"] > 0 and loop["bare_step_tokens_per_s"] > 0
    assert math.isclose(loop["loop_over_bare"], loop["loop_tokens_per_s"] / loop["bare_step_tokens_per_s"])
    assert set(res["adam"]) == {"torch", "foreach", "fused", "saeforge"}


def test_phase_clock_charges_exclusive_time(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(harness.time, "perf_counter", lambda: float(next(ticks)))
    clock = harness.PhaseClock()  # t=0
    clock.enter("outer")  # t=1
    inner = clock.wrap("inner", lambda: None)
    inner()  # enter t=2, exit t=3
    clock.exit()  # t=4
    assert clock.phases == {"outer": 2.0, "inner": 1.0}


def test_phase_floors_follow_the_shape():
    shape = {"B": 4096, "d_in": 768, "d_sae": 24576, "k": 64}
    floors = phase_floors(shape, gflops=204.0, gbytes_per_s=20.0)
    assert math.isclose(floors["encoder matmul"], 2 * 4096 * 768 * 24576 / 204e9)
    assert math.isclose(floors["optimizer"], 28 * (2 * 768 * 24576 + 24576 + 768) / 20e9)
    doubled = phase_floors({**shape, "B": 8192}, gflops=204.0, gbytes_per_s=20.0)
    assert math.isclose(doubled["encoder matmul"], 2 * floors["encoder matmul"])
    assert doubled["optimizer"] == floors["optimizer"]


def test_peer_worker_reads_each_batch_of_the_shared_file(tmp_path):
    """The peer harness's workers read batch i of the coordinator's .npy by plain file reads (no memory map, so
    their resident set does not grow with --batches): the same rows as numpy's loader."""
    import numpy as np

    from bench.peers.worker import _Batches

    arr = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    np.save(tmp_path / "b.npy", arr)
    batches = _Batches(str(tmp_path / "b.npy"))
    assert len(batches) == 5 and batches.shape == (5, 7, 3)
    for i in (4, 0, 2):
        np.testing.assert_array_equal(batches[i].numpy(), arr[i])


def test_screen_bench_batch_mode_checks_the_batch_screen_against_float64():
    """bench.screen_bench's BatchTopK mode reports, per batch, a certified batch screen whose pairs equal the
    float64 batch rule, and the timings of the three selections."""
    from types import SimpleNamespace

    from bench.screen_bench import measure_batch

    g = torch.Generator().manual_seed(0)
    sae = SimpleNamespace(
        W_enc=torch.randn(32, 1024, generator=g) / 32**0.5,
        b_enc=torch.randn(1024, generator=g) * 0.1,
        b_dec=torch.randn(32, generator=g),
    )
    xs = [torch.randn(64, 32, generator=g) + sae.b_dec for _ in range(2)]
    out = measure_batch(xs, sae, k=4, repeats=1)
    assert out["certified_batches"] == 2
    assert all(b["equal_to_float64_batch_rule"] and b["kept_per_row"] == 4 for b in out["batches"])
    assert set(out["seconds"]) == {
        "batch_screen",
        "rowwise_screen_offers",
        "dense_offers",
        "gemm_fp32",
        "gemm_bf16",
    }
