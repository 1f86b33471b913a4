"""Matryoshka on the toy of bench/quality.py at its defaults, then per nested group: held-out dead fraction, the
mean best cosine of its live latents with a planted feature, how many planted features have their best latent
in it, and its share of the per-token L0.

    PYTHONPATH=. python bench/matryoshka_groups.py 512      # d_sae; one JSON line per group
"""

import itertools
import json
import sys

import torch

from bench.quality import TOY, ToySource, run_one
from saeforge.sae.matryoshka import default_group_sizes
from saeforge.synthetic import SyntheticActivations


def main() -> None:
    torch.set_num_threads(1)
    d_sae = int(sys.argv[1])
    toy = SyntheticActivations(TOY)
    toy._generator = torch.Generator().manual_seed(2**31 - 1)
    held, feats = toy.sample(65536), toy.features
    trained, secs = run_one("matryoshka", ToySource(4096), 4_900_000, 4096, d_sae, {})
    sae = trained.sae
    with torch.no_grad():
        z = sae.encode(held)
        fires = (z > 0).sum(0)
        dec = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
        true = feats / feats.norm(dim=1, keepdim=True)
        cos = true @ dec.T  # [n_feat, d_sae]
        best_lat = cos.max(0).values  # per latent: best feature match
        owner = cos.argmax(1)  # per feature: best latent
    ends = list(itertools.accumulate(default_group_sizes(d_sae)))
    start = 0
    for g, end in enumerate(ends):
        sl = slice(start, end)
        print(
            json.dumps(
                {
                    "d_sae": d_sae,
                    "group": g,
                    "latents": end - start,
                    "dead_frac": round(float((fires[sl] == 0).float().mean()), 3),
                    "mean_best_cos_alive": round(
                        float(best_lat[sl][fires[sl] > 0].mean()) if (fires[sl] > 0).any() else -1, 3
                    ),
                    "features_best_matched_here": int(((owner >= start) & (owner < end)).sum()),
                    "mean_l0_share": round(float((z[:, sl] > 0).sum(1).float().mean()), 2),
                }
            )
        )
        start = end


if __name__ == "__main__":
    main()
