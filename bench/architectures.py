"""Every architecture on the same synthetic ground truth, equal tokens, similar L0.

    python bench/architectures.py [--steps 3000] [--batch-size 512] [--seeds 0 1 2]

Prints a Markdown table (feature recovery, FVU, L0, dead %) averaged over seeds; docs/architectures.md records
its output. The training loop is deliberately plain (Adam, linear sparsity warm-up, dead = no firing in the last
`dead_tokens` tokens); the real trainer lives in saeforge.train.
"""

from __future__ import annotations

import argparse
import time

import torch

from saeforge.sae import TrainStepInput, create_training_sae
from saeforge.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")


def fit_and_measure(
    architecture: str,
    data: SyntheticActivations,
    d_sae: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float = 3e-3,
    warmup_fraction: float = 0.1,
    dead_tokens: int = 20_000,
    seed: int = 0,
    **cfg: object,
) -> dict[str, float]:
    """Trains one SAE on `steps` batches of `data` and measures its exported (raw-activation) version."""
    torch.manual_seed(seed)
    d_in = data.cfg.d_in
    sample = data.sample(8192)
    scale = d_in**0.5 / sample.norm(dim=1).mean().item()
    sae = create_training_sae(dict(architecture=architecture, d_in=d_in, d_sae=d_sae, k=k, seed=seed, **cfg))
    sae.init_from_data(scale * sample)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(d_sae)
    warmup_steps = max(1, int(warmup_fraction * steps))
    for step in range(steps):
        x = scale * data.sample(batch_size)
        inp = TrainStepInput(
            x=x,
            step=step,
            dead_mask=since_fired >= dead_tokens,
            sparsity_warmup=min(1.0, (step + 1) / warmup_steps),
        )
        out = sae.training_forward(inp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        since_fired = torch.where(out.fired > 0, 0.0, since_fired + batch_size)
    exported = sae.export(scale)
    with torch.no_grad():
        x = data.sample(16384)
        z = exported.encode(x)
        x_hat = exported.decode(z)
    return {
        "recovery": feature_recovery(exported.W_dec, data.features),
        "fvu": float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "l0": float((z > 0).sum(1).float().mean()),
        "dead": float(((z > 0).sum(0) == 0).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per SAE")
    parser.add_argument("--batch-size", type=int, default=512, help="tokens per step")
    parser.add_argument("--d-in", type=int, default=64, help="activation width")
    parser.add_argument("--n-features", type=int, default=256, help="true features (superposition: > d_in)")
    parser.add_argument("--d-sae", type=int, default=256, help="SAE latents")
    parser.add_argument(
        "--l0", type=float, default=8.0, help="true features firing per token; also k/target L0"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to average over")
    args = parser.parse_args()
    k = round(args.l0)
    print(
        f"d_in={args.d_in} n_features={args.n_features} d_sae={args.d_sae} true L0={args.l0} k=target_l0={k}"
    )
    print(f"tokens per SAE: {args.steps * args.batch_size:,}\n")
    print("| architecture | recovery | FVU | L0 | dead % | seconds |")
    print("|---|---|---|---|---|---|")
    for arch in ARCHITECTURES:
        rows, t0 = [], time.perf_counter()
        for seed in args.seeds:
            data = SyntheticActivations(
                SyntheticConfig(d_in=args.d_in, n_features=args.n_features, l0=args.l0, seed=seed)
            )
            rows.append(fit_and_measure(arch, data, args.d_sae, k, args.steps, args.batch_size, seed=seed))
        secs = (time.perf_counter() - t0) / len(args.seeds)
        mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
        print(
            f"| {arch} | {mean['recovery']:.3f} | {mean['fvu']:.3f} | {mean['l0']:.2f} | "
            f"{100 * mean['dead']:.1f} | {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
