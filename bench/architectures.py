"""Every architecture on the same synthetic ground truth, equal tokens, similar L0.

    PYTHONPATH=. python bench/architectures.py [--steps 1500] [--seeds 0 1 2]

Prints a Markdown table (feature recovery, FVU, L0, dead %) averaged over seeds; docs/architectures.md records
its output. The training loop is deliberately plain (Adam, linear sparsity warm-up, dead = no firing in the last
`dead_tokens` tokens); the real trainer lives in saeforge.train.
"""

from __future__ import annotations

import argparse
import time

import torch

from saeforge.sae import TRAINING_ARCHITECTURES, TrainStepInput, create_training_sae
from saeforge.sae.registry import ALIASES
from saeforge.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery

# Settings beyond the shared d_sae and k / target_l0 (as in tests/sae/test_quality.py): a stronger AuxK for the
# TopK family; Matryoshka's groups are set in main from d_sae.
SETTINGS: dict[str, dict] = {
    name: {"aux_coefficient": 0.25} if cls.family == "topk" else {}
    for name, cls in TRAINING_ARCHITECTURES.items()
    if name not in ALIASES
}


def fit_and_measure(
    architecture: str,
    data: SyntheticActivations,
    d_sae: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float = 1e-2,
    warmup_fraction: float = 0.5,
    dead_tokens: int = 2_000,
    seed: int = 0,
    **cfg: object,
) -> dict[str, float]:
    """Trains one SAE on `steps` batches of `data` and measures its exported (raw-activation) version."""
    torch.manual_seed(seed)
    d_in = data.cfg.d_in
    sample = data.sample(8192)
    scale = d_in**0.5 / sample.norm(dim=1).mean().item()
    family = TRAINING_ARCHITECTURES[architecture].family
    sparsity = {"k": k} if family == "topk" else {"target_l0": k}
    sae = create_training_sae(
        dict(architecture=architecture, d_in=d_in, d_sae=d_sae, seed=seed, **sparsity, **cfg)
    )
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
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per SAE")
    parser.add_argument("--batch-size", type=int, default=256, help="tokens per step")
    parser.add_argument("--d-in", type=int, default=32, help="activation width")
    parser.add_argument("--n-features", type=int, default=48, help="true features (superposition: > d_in)")
    parser.add_argument("--d-sae", type=int, default=48, help="SAE latents")
    parser.add_argument(
        "--l0", type=float, default=3.0, help="true features firing per token; also k/target L0"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to average over")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = round(args.l0)
    print(
        f"d_in={args.d_in} n_features={args.n_features} d_sae={args.d_sae} true L0={args.l0} k=target_l0={k}"
    )
    print(f"tokens per SAE: {args.steps * args.batch_size:,}\n")
    print("| architecture | recovery | FVU | L0 | dead % | seconds |")
    print("|---|---|---|---|---|---|")
    for arch, settings in SETTINGS.items():
        rows, t0 = [], time.perf_counter()
        for seed in args.seeds:
            data = SyntheticActivations(
                SyntheticConfig(d_in=args.d_in, n_features=args.n_features, l0=args.l0, seed=seed)
            )
            if "group_sizes" in TRAINING_ARCHITECTURES[arch].sparsity_settings:
                settings = {**settings, "group_sizes": [args.d_sae - args.d_sae // 6, args.d_sae // 6]}
            rows.append(
                fit_and_measure(arch, data, args.d_sae, k, args.steps, args.batch_size, seed=seed, **settings)
            )
        secs = (time.perf_counter() - t0) / len(args.seeds)
        mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
        print(
            f"| {arch} | {mean['recovery']:.3f} | {mean['fvu']:.3f} | {mean['l0']:.2f} | "
            f"{100 * mean['dead']:.1f} | {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
