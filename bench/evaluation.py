"""Evaluation throughput: `saeforge.eval.evaluate` of an exported TopK SAE on activations (no model).

evaluate has a fixed cost (decoder-neighbour cosines, d_sae^2 d_in FLOPs) and a per-token streaming cost; two
runs on n and 2n batches separate them: streaming tokens/s = n B / (t_2n - t_n), fixed = t_n - n B / rate.
"""

from __future__ import annotations

import time

import torch

from bench.steps import Shape, activations, build_saeforge


def measure_eval(shape: Shape, n_batches: int = 4) -> dict[str, float]:
    from saeforge.eval.evaluate import evaluate

    sae = build_saeforge("topk", shape).export(1.0)
    xs = activations(shape, n=2)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        evaluate(sae, (xs[i % 2] for i in range(n)))
        return time.perf_counter() - t0

    run(1)
    t_n, t_2n = run(n_batches), run(2 * n_batches)
    rate = n_batches * shape.B / max(t_2n - t_n, 1e-9)
    return {
        "streaming_tokens_per_s": rate,
        "fixed_s": max(t_n - n_batches * shape.B / rate, 0.0),
        "seconds_n_batches": t_n,
        "seconds_2n_batches": t_2n,
        "n_batches": n_batches,
        "threads": torch.get_num_threads(),
    }
