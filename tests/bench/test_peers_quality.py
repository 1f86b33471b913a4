"""The peer quality harness (bench/peers/quality.py): its scoring against a naive reference, its matched-time
reading of a curve, and its workers end to end at a tiny shape (a peer is skipped when its venv is absent)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from bench.peers.quality import QualityWorker, at_time, score

VENVS = Path(os.environ.get("SAEFORGE_VENV_CACHE", Path.home() / ".cache/saeforge/venvs"))
SPARSIFY = VENVS / "sparsify-1.3.3/bin/python"


def test_score_matches_a_naive_reference(tmp_path):
    rng = np.random.default_rng(0)
    held = rng.normal(size=(50, 6)).astype(np.float32)
    x_hat = held + 0.1 * rng.normal(size=held.shape).astype(np.float32)
    features = rng.normal(size=(4, 6)).astype(np.float32)
    W_dec = np.concatenate([3 * features, rng.normal(size=(2, 6))]).astype(np.float32)
    fired = np.array([5, 0, 2, 0, 1, 9])
    np.savez(tmp_path / "r.npz", x_hat=x_hat, l0=np.arange(50), fired=fired, W_dec=W_dec)
    row = score(tmp_path / "r.npz", held, features)
    num = sum(float(v) ** 2 for v in (held.astype(float) - x_hat).flat)
    mean = held.astype(float).mean(0)
    den = sum(float(v) ** 2 for v in (held.astype(float) - mean).flat)
    assert row["fvu"] == pytest.approx(num / den, rel=1e-9)
    assert row["l0"] == pytest.approx(24.5)
    assert row["dead"] == pytest.approx(2 / 6)
    assert row["mmcs"] == pytest.approx(1.0, abs=1e-6)  # every planted feature is a (scaled) decoder row


def test_at_time_interpolates_and_clamps():
    curve = [
        {"seconds": 10.0, "tokens": 100, "fvu": 0.5},
        {"seconds": 30.0, "tokens": 200, "fvu": 0.3},
    ]
    assert at_time(curve, 20.0) == pytest.approx({"tokens": 150, "fvu": 0.4})
    assert at_time(curve, 99.0) == {"tokens": 200, "fvu": 0.3}
    assert at_time(curve, 5.0) == pytest.approx({"tokens": 50})  # before the first evaluation: tokens only


@pytest.mark.parametrize("lib", ["saeforge", "sparsify"])
def test_worker_trains_on_the_stream_and_encodes_held_out(tmp_path, lib):
    import sys

    python = sys.executable if lib == "saeforge" else str(SPARSIFY)
    if not Path(python).exists():
        pytest.skip(f"no {lib} venv at {python} (bash bench/peers/install.sh {lib})")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pool.npy", rng.normal(size=(512, 8)).astype(np.float32))
    np.save(tmp_path / "index.npy", rng.integers(0, 512, size=(4, 64)))
    np.save(tmp_path / "held.npy", rng.normal(size=(100, 8)).astype(np.float32))
    args = ["--pool", str(tmp_path / "pool.npy"), "--index", str(tmp_path / "index.npy")]
    w = QualityWorker(lib, "topk", python, [*args, "--d-sae", "32", "--k", "3"])
    try:
        assert set(w.ask("train 3")) == {"seconds"}  # the chunk's clock is reported; its value is not tested
        assert w.ask(f"eval {tmp_path / 'held.npy'} {tmp_path / 'out.npz'}") == {"ok": True}
        assert math.isfinite(w.ask("train 1")["seconds"])
    finally:
        w.quit()
    r = np.load(tmp_path / "out.npz")
    assert r["x_hat"].shape == (100, 8) and r["W_dec"].shape == (32, 8)
    assert (r["l0"] <= 3).all() and r["l0"].mean() > 2  # TopK with k 3 (a zero top value may not count)
    assert r["fired"].sum() == r["l0"].sum()
    assert 0 < score(tmp_path / "out.npz", np.load(tmp_path / "held.npy"), None)["fvu"] < 2


def test_seed_draws_another_step_index(tmp_path):
    from bench.peers.quality import parse, write_index

    def index(seed: int) -> np.ndarray:
        a = parse(
            [
                "--problem",
                "toy",
                "--tokens",
                "256",
                "--batch",
                "64",
                "--curve-points",
                "2",
                "--seed",
                str(seed),
            ]
        )
        (tmp_path / str(seed)).mkdir()
        return np.load(write_index(a, 1000, tmp_path / str(seed)))

    zero, one = index(0), index(1)
    assert zero.shape == one.shape == (4, 64) and not np.array_equal(zero, one)
    assert np.array_equal(zero, np.random.default_rng(0).integers(0, 1000, size=(4, 64)))
