"""Feature absorption on a toy with planted hierarchy: what Matryoshka's nested losses are for, and how much of it a
lighter prefix weight keeps.

    PYTHONPATH=. python bench/matryoshka_hierarchy.py ARCH [--set key=value ...] [--tag T]

The toy (d_in 128, 512 unit features, ~16 per token, the budget of bench/quality.py's toy): 64 parents fire with
probability 0.05 each; an active parent turns on one of its 3 children with probability 0.8 (a child never fires
without its parent); the other 320 features fire independently (Zipf-like probabilities, ~10 per token). Feature
absorption (Chanin et al. 2024, arXiv 2409.14507): a latent that should track the parent stops firing when a child
fires, because the child's latent took the parent's direction. Measured on 65,536 held-out tokens with the
exported SAE: for each parent, its latent is the one whose decoder row is closest to it; the absorption rate is the
fraction of tokens with the parent and a child active on which that latent is silent (mean over parents), beside
MMCS over all 512 features, the parents' and the children's MMCS, FVU, L0 and the dead fraction. One JSON line
per run is appended to --out-jsonl.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.quality import PoolSource, measure, parse_sets, run_one

D_IN, PARENTS, CHILDREN, FLAT = 128, 64, 3, 320
P_PARENT, P_CHILD = 0.05, 0.8


class HierarchyToy:
    """Features [512, d_in]: rows 0..63 parents, 64..255 children (child c of parent p is 64 + 3p + c), 256.. flat."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(0x41E2 + seed)
        n = PARENTS * (1 + CHILDREN) + FLAT
        f = torch.randn(n, D_IN, generator=g)
        self.features = f / f.norm(dim=1, keepdim=True)
        rank = torch.arange(FLAT, dtype=torch.float64)
        w = (rank + 10.0) ** -0.5
        self.flat_prob = (w * 10.0 / w.sum()).float()

    def codes(self, n: int, g: torch.Generator) -> torch.Tensor:
        parent = torch.rand(n, PARENTS, generator=g) < P_PARENT
        has_child = parent & (torch.rand(n, PARENTS, generator=g) < P_CHILD)
        which = torch.randint(CHILDREN, (n, PARENTS), generator=g)
        child = torch.zeros(n, PARENTS, CHILDREN, dtype=torch.bool)
        child.scatter_(2, which.unsqueeze(2), has_child.unsqueeze(2))
        flat = torch.rand(n, FLAT, generator=g) < self.flat_prob
        fires = torch.cat([parent, child.view(n, -1), flat], dim=1)
        magnitude = (1.0 + 0.25 * torch.randn(fires.shape, generator=g)).abs()
        return fires * magnitude

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.codes(n, g)
        return c @ self.features + 0.01 * torch.randn(n, D_IN, generator=g), c


@torch.no_grad()
def absorption(sae, toy: HierarchyToy, x: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """The absorption rate (module docstring) and the best-match cosines of parents, children and flat features."""
    z = sae.encode(x)
    dec = sae.W_dec.double()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (toy.features.double() @ dec.T).max(1)  # per feature: best cosine and its latent
    n_h = PARENTS * (1 + CHILDREN)
    rates = []
    for p in range(PARENTS):
        kids = codes[:, PARENTS + CHILDREN * p : PARENTS + CHILDREN * (p + 1)].sum(1) > 0
        both = (codes[:, p] > 0) & kids
        if both.any():
            rates.append(float((z[both, best.indices[p]] <= 0).float().mean()))
    return {
        "absorption": sum(rates) / len(rates),
        "mmcs_parents": float(best.values[:PARENTS].mean()),
        "mmcs_children": float(best.values[PARENTS:n_h].mean()),
        "mmcs_flat": float(best.values[n_h:].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch")
    parser.add_argument("--set", nargs="*", default=[], help="spec fields, key=value (JSON values)")
    parser.add_argument("--tokens", type=int, default=4_900_000)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out-jsonl", default="bench/results/matryoshka-hierarchy.jsonl")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    toy = HierarchyToy()
    pool, _ = toy.sample(2**20, torch.Generator().manual_seed(1))
    held, codes = toy.sample(65_536, torch.Generator().manual_seed(2**31 - 1))
    extra = parse_sets(a.set)
    trained, secs = run_one(a.arch, PoolSource(pool, 4096), a.tokens, 4096, a.d_sae, extra)
    row = {"arch": a.arch, "set": extra, "tag": a.tag, "tokens": a.tokens, "d_sae": a.d_sae}
    row |= {"seconds": round(secs, 1), **absorption(trained.sae, toy, held, codes)}
    row |= measure(trained.sae, held, toy.features)
    print(json.dumps(row))
    with open(a.out_jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
