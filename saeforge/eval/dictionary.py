"""Dictionary health from the decoder: duplication, an absorption proxy, and stability across seeds.

Cosines between decoder rows are computed in row chunks, so a d_sae = 24k dictionary never needs a dense
[d_sae, d_sae] matrix in memory (a chunk is [chunk, d_sae]).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from saeforge.eval.config import HUNGARIAN_MAX_LATENTS

DUPLICATE_COSINE = 0.9
ABSORPTION_COSINE = 0.5
ABSORPTION_COFIRE = 0.1
STABILITY_COSINE = 0.7


def _unit_rows(W: Tensor) -> Tensor:
    W = W.detach().float()
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def max_cosine(
    A: Tensor, B: Tensor, *, exclude_diagonal: bool = False, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """For each row of A [n, d], the largest cosine with a row of B [m, d] and that row's index.

    exclude_diagonal: skip B[i] for A[i] (A and B are the same matrix). Returns ([n] float32, [n] int64).
    """
    A, B = _unit_rows(A), _unit_rows(B)
    best = torch.empty(A.shape[0], dtype=torch.float32, device=A.device)
    idx = torch.empty(A.shape[0], dtype=torch.int64, device=A.device)
    for start in range(0, A.shape[0], chunk):
        sims = A[start : start + chunk] @ B.T
        if exclude_diagonal:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = -float("inf")
        best[start : start + chunk], idx[start : start + chunk] = sims.max(dim=1)
    return best, idx


def decoder_neighbours(W_dec: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """W_dec [d_sae, d_in] -> ([d_sae] max cosine with another decoder row, [d_sae] that row's index)."""
    if W_dec.shape[0] < 2:
        return torch.full((W_dec.shape[0],), float("nan")), torch.zeros(W_dec.shape[0], dtype=torch.int64)
    return max_cosine(W_dec, W_dec, exclude_diagonal=True, chunk=chunk)


def duplication_metrics(max_cos: Tensor) -> dict[str, float]:
    """From [d_sae] nearest-neighbour decoder cosines: `duplication` and `mean_max_decoder_cosine`."""
    m = max_cos.double()
    return {
        "duplication": float((m > DUPLICATE_COSINE).double().mean()),
        "mean_max_decoder_cosine": float(m.mean()),
    }


def absorption_proxy(
    max_cos: np.ndarray, neighbour: np.ndarray, fires: np.ndarray, cofires: np.ndarray
) -> float | None:
    """Fraction of live latents whose nearest decoder neighbour points the same way but fires on other tokens.

    A latent i counts when its neighbour j is live, cos(W_dec[i], W_dec[j]) is in
    [ABSORPTION_COSINE, DUPLICATE_COSINE], and the two fire together on fewer than ABSORPTION_COFIRE of the
    rarer one's firings. All arrays are [d_sae]. None when no latent is live. A proxy: see docs/evaluation.md.
    """
    live = fires > 0
    if not live.any():
        return None
    j = neighbour
    related = (max_cos >= ABSORPTION_COSINE) & (max_cos <= DUPLICATE_COSINE) & live & live[j]
    rarer = np.minimum(fires, fires[j]).clip(min=1)
    exclusive = cofires / rarer < ABSORPTION_COFIRE
    return float((related & exclusive).sum() / live.sum())


@torch.no_grad()
def stability(
    W_dec_a: Tensor, W_dec_b: Tensor, *, hungarian_max_latents: int = HUNGARIAN_MAX_LATENTS
) -> dict[str, float | None]:
    """How well the latents of dictionary A [d_sae, d_in] are found again in dictionary B [d_sae', d_in].

    A crosscoder's decoders [d_sae, n_sites, d_in] are compared concatenated over sites ([d_sae, n_sites *
    d_in]): a latent is found again only where it writes the same directions with the same balance of sites.
    stability_match_fraction: share of A's latents with a B decoder row at cosine > STABILITY_COSINE.
    stability_hungarian_cosine: mean cosine of a one-to-one matching maximising the total cosine
        (scipy.optimize.linear_sum_assignment); None above `hungarian_max_latents` latents, where the dense
        cost matrix and the O(n^3) solve are too large.
    """
    W_dec_a, W_dec_b = W_dec_a.flatten(1), W_dec_b.flatten(1)
    best, _ = max_cosine(W_dec_a, W_dec_b)
    out: dict[str, float | None] = {
        "stability_match_fraction": float((best > STABILITY_COSINE).double().mean())
    }
    if max(W_dec_a.shape[0], W_dec_b.shape[0]) > hungarian_max_latents:
        out["stability_hungarian_cosine"] = None
        return out
    sims = (_unit_rows(W_dec_a) @ _unit_rows(W_dec_b).T).double().cpu().numpy()
    rows, cols = linear_sum_assignment(sims, maximize=True)
    out["stability_hungarian_cosine"] = float(sims[rows, cols].mean())
    return out
