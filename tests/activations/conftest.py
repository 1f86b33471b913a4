"""Fixtures of the activation tests: the tiny GPT-2 and capture configs small enough for 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gpt2(tiny_model) -> Path:
    return tiny_model("gpt2")


@pytest.fixture
def make_cfg(gpt2, tmp_path):
    """`make_cfg(**overrides)` -> CaptureConfig of a small capture of `builtin` at layers.1.resid_post."""
    from saeforge.activations import CaptureConfig

    def make(**kw):
        args = dict(
            model=str(gpt2),
            hooks=["layers.1.resid_post"],
            data="builtin",
            tokens=1500,
            out=tmp_path / "out",
            context_size=32,
            shard_tokens=256,
            batch_size=4,
        )
        args.update(kw)
        return CaptureConfig(**args)

    return make


@pytest.fixture(scope="session")
def reference_capture(tiny_model, tmp_path_factory):
    """One uninterrupted capture (two hooks) that several tests compare against; returns its CaptureConfig."""
    import torch

    from saeforge.activations import CaptureConfig, capture

    cfg = CaptureConfig(
        model=str(tiny_model("gpt2")),
        hooks=["layers.0.resid_post", "layers.1.resid_post"],
        data="builtin",
        tokens=1500,
        out=tmp_path_factory.mktemp("ref") / "out",
        context_size=32,
        shard_tokens=256,
        batch_size=4,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capture(cfg)
    finally:
        torch.set_num_threads(before)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models' matmuls are far too small to gain from threads; on a busy machine OpenMP's spinning
    threads make them 10-30x slower. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
