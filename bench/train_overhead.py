"""Trainer overhead: steps/s of `saeforge.train.train` against a bare loop (training_forward, backward, Adam,
decoder-norm hooks) on the same SAE and batches, in one process.

    python bench/train_overhead.py [--d-in 256] [--d-sae 4096] [--k 32] [--batch 2048] [--steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from saeforge.sae import TrainingSAEConfig, TrainStepInput, create_training_sae
from saeforge.train import TrainConfig, train


class Batches:
    def __init__(self, n: int, batch: int, d_in: int):
        g = torch.Generator().manual_seed(0)
        self.pool = [torch.randn(batch, d_in, generator=g) for _ in range(8)]
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return self.pool[self.i % len(self.pool)]


def bare(args) -> float:
    sae = create_training_sae(
        TrainingSAEConfig(architecture="topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k)
    )
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    src = Batches(args.steps, args.batch, args.d_in)
    sae.init_from_data(next(src))
    t = time.perf_counter()
    for step in range(args.steps):
        out = sae.training_forward(TrainStepInput(x=next(src), step=step))
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        opt.zero_grad(set_to_none=True)
    return args.steps / (time.perf_counter() - t)


def trainer(args) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.parse(
            dict(
                tokens=args.batch * args.steps,
                batch_size=args.batch,
                out=out,
                device="cpu",
                plots=False,
                saes=[dict(name="tk", architecture="topk", k=args.k, d_sae=args.d_sae, grad_clip_norm=0)],
            )  # fmt: skip
        )
        times = []
        train(
            cfg,
            source=Batches(args.steps, args.batch, args.d_in),
            progress=lambda e: times.append(time.perf_counter()),
        )
    # steady state: from the end of the first step to the end of the last
    return (len(times) - 1) / (times[-1] - times[0])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    b, t = bare(args), trainer(args)
    print(
        f"torch threads {torch.get_num_threads()}; bare loop {b:.2f} steps/s; trainer {t:.2f} steps/s; "
        f"trainer/bare {t / b:.3f}"
    )
