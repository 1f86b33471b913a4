"""Forward + backward of one TopK-family training step, in process, for paired before/after comparisons.

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python bench/fwd_bwd_bench.py --arch batchtopk --steps 5

prints one JSON line: the medians of `training_forward` + `loss.backward()` (no optimiser) at the given shape,
of the forward and of the backward alone, as wall seconds and as the process's CPU seconds (with one thread,
the CPU time a step consumed: less sensitive than wall time to other processes sharing the cores). Run it alternately from two checkouts (A B A B ...) and compare pair by pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from saeforge.sae import create_training_sae
from saeforge.sae.base import TrainStepInput


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="batchtopk")
    p.add_argument("--B", type=int, default=1024)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(a.d_in, generator=g)
    xs = [mean + torch.randn(a.B, a.d_in, generator=g) for _ in range(2)]
    sae = create_training_sae(
        {"architecture": a.arch, "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "b_dec_init": "mean"}
    )
    sae.init_from_data(xs[0])
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    wall, cpu = [], []
    for i in range(a.warmup + a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = sae.training_forward(TrainStepInput(x=xs[i % 2], dead_mask=dead))
        t1, c1 = time.perf_counter(), time.process_time()
        out.loss.backward()
        t2, c2 = time.perf_counter(), time.process_time()
        sae.zero_grad(set_to_none=True)
        if i >= a.warmup:
            wall.append((t1 - t0, t2 - t1))
            cpu.append((c1 - c0, c2 - c1))
    result = {"arch": a.arch}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        result[clock] = {
            "step_s": statistics.median(f + b for f, b in times),
            "forward_s": statistics.median(f for f, _ in times),
            "backward_s": statistics.median(b for _, b in times),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
