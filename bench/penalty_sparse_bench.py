"""A penalty architecture's training step (ReLU + L1, JumpReLU, Gated), sparse path against dense, at set fractions
of firing latents, in one process, interleaved: where the crossover lies that
each architecture's `sparse_max_density` encodes.

    PYTHONPATH=. python bench/penalty_sparse_bench.py --arch standard --densities 0.0026 0.02 0.0625 0.125 --rounds 5

Per density, the bias that decides firing (b_enc; Gated's b_gate) is shifted so that that fraction of the
(token, latent) pairs of one fixed batch fires; each round then times one training_forward + backward on the dense path and one on the sparse path (order
reversed every other round). Prints per-density medians (wall s) and the per-round ratio dense / sparse (min,
median, max): above 1 the sparse path is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from saeforge.sae import TrainStepInput, create_training_sae


def _step(sae, x: torch.Tensor, max_density: float) -> float:
    type(sae).sparse_max_density = max_density
    t0 = time.perf_counter()
    out = sae.training_forward(TrainStepInput(x=x, sparsity_warmup=0.0))
    out.loss.backward()
    seconds = time.perf_counter() - t0
    sae.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="standard", choices=["standard", "jumprelu", "gated"])
    p.add_argument("--B", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--densities", type=float, nargs="+", default=[0.0026, 0.02, 0.0625, 0.125])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.d_in, generator=g) + torch.randn(a.B, a.d_in, generator=g)
    sae = create_training_sae(
        {"architecture": a.arch, "d_in": a.d_in, "d_sae": a.d_sae, "sparsity_coefficient": 1.0}
    )
    sae.init_from_data(x)
    with torch.no_grad():
        pre0, bias, point = sae.firing_pre(x)
        pre0 = pre0 - point
    rows = []
    for density in a.densities:
        with torch.no_grad():  # shift the firing bias so that `density` of the pairs fire
            cut = pre0.flatten().kthvalue(int(pre0.numel() * (1 - density))).values
            bias -= cut
            pre, _, point = sae.firing_pre(x)
            active = float((pre > point).float().mean())
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        _step(sae, x, 0.0), _step(sae, x, 1.0)  # warm-up
        for r in range(a.rounds):
            order = [("dense", 0.0), ("sparse", 1.0)]
            for name, limit in order if r % 2 == 0 else order[::-1]:
                times[name].append(_step(sae, x, limit))
        with torch.no_grad():
            bias += cut
        ratios = sorted(d / s for d, s in zip(times["dense"], times["sparse"], strict=True))
        row = {
            "arch": a.arch,
            "density": round(active, 5),
            "dense_s": round(statistics.median(times["dense"]), 3),
            "sparse_s": round(statistics.median(times["sparse"]), 3),
            "dense_over_sparse": [
                round(ratios[0], 2),
                round(statistics.median(ratios), 2),
                round(ratios[-1], 2),
            ],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
