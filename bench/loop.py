"""The whole training loop with data loading (saeforge.train.train reading an activation store from disk)
against the bare TopK step measured in the same run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.steps import Shape, measure


def measure_loop(shape: Shape, steps: int, warmup: int, workdir: Path) -> dict[str, float]:
    """Writes a store of (steps + warmup + 1) batches of synthetic activations, trains a TopK SAE on it with
    `saeforge.train.train` and times every step from the progress callback. Returns the loop's tokens/s
    (median step), the bare step's tokens/s with the trainer's optimiser (Adam), and their ratio."""
    from saeforge.activations.writer import write_store
    from saeforge.train.config import TrainConfig
    from saeforge.train.trainer import train

    n_steps = steps + warmup + 1
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(shape.d_in, generator=g) + torch.randn(n_steps * shape.B, shape.d_in, generator=g)
    write_store(workdir / "store", rows)
    cfg = TrainConfig(
        activations=workdir / "store",
        tokens=n_steps * shape.B,
        batch_size=shape.B,
        out=workdir / "run",
        saes=[{"name": "topk", "architecture": "topk", "d_sae": shape.d_sae, "k": shape.k}],
        plots=False,
        loggers=[],
    )
    stamps: list[float] = []
    train(cfg, progress=lambda event: stamps.append(time.perf_counter()))
    step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][warmup:]
    loop_step = statistics.median(step_times)
    bare = measure("topk", shape, "saeforge", steps, warmup, adam="saeforge")
    loop_tps = shape.B / loop_step
    return {
        "loop_tokens_per_s": loop_tps,
        "loop_step_s_median": loop_step,
        "loop_step_s_min": min(step_times),
        "loop_step_s_max": max(step_times),
        "bare_step_tokens_per_s": bare["tokens_per_s"],
        "loop_over_bare": loop_tps / bare["tokens_per_s"],
    }
