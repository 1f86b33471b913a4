"""A certified low-precision screen for TopK pre-activations: bf16 GEMM, exact fp32 for the candidates only.

The exact TopK step needs pre = xc @ W_enc + b_enc [B, d_sae] in fp32 only to find each row's k largest entries,
and their values. The screen finds them from a cheaper product and proves it found the right ones:

    s   = bf16(xc) @ bf16(W_enc) + bf16(b_enc)             [B, d_sae] in bf16 (oneDNN: fp32 accumulation)
    C   = top-(k + margin) of s per row                     candidates; t = the (k + margin + 1)-th value of s
    v   = exact fp32 <xc[b], W_enc[:, j]> + b_enc[j], j in C   (latent-major dot products, kernels._pair_dots)
    top = the k largest of v                                the answer, when the row is certified

Error bound (per element, real arithmetic y = xc . w_j + b_j; u = 2^-8 bf16 unit roundoff, g = (d_in + 1) 2^-24):
with dx = xc - bf16(xc) and dW = W_enc - bf16(W_enc) known exactly,
    |s_j - y_j| <= |xc| |dW_j| + |dx| |bf16(w_j)| + u |b_j| + g (|xc| |w_j|' + |b_j|) + u/(1-u) |s_j|
              <= E + u/(1-u) |s_j|,   E = ||xc|| max_j ||dW_j|| + ||dx|| max_j ||bf16(w_j)|| + u max|b| + g(...)
(Cauchy-Schwarz on each product; the sums of |.| products are bounded by norms). A non-candidate j has s_j <= t,
so y_j <= f(t) + E with f(t) = t + u/(1-u)|t| increasing. fp32 evaluation (the candidates' v here, the dense
reference's GEMM) is within d = g (||xc|| max||w_j|| + max|b|) of y. The row's selection equals the exact fp32
TopK's whenever

    v_(k) - 2d > max(v_(k+1) + 2d, f(t) + E + d)

(the k-th candidate clears both the best rejected candidate and every non-candidate, with both evaluations'
errors). Rows that fail fall back to the exact fp32 row (counted). The values returned are fp32 dot products of
the selected latents (equal to the dense GEMM's up to fp32 rounding, d).

`screened_topk` is the fast path; `exact_topk` is the eager reference it is tested against (tests/sae/test_screen.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeforge.sae import kernels

U_BF16 = 2.0**-8
U_FP32 = 2.0**-24


@dataclass
class ScreenResult:
    """values, indices [B, k] (any order within a row); fallback: rows recomputed exactly (not certified);
    near_ties: those of them whose screen did hold every non-candidate below the k-th candidate, failing only
    because the k-th and (k+1)-th exact values lie within fp32's own error bound of each other (no margin helps)."""

    values: Tensor
    indices: Tensor
    fallback: int
    near_ties: int = 0


def exact_topk(xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> ScreenResult:
    """The reference: xc [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae] -> top-k of the fp32 pre-activations."""
    with torch.no_grad():
        values, indices = kernels.topk_select(torch.addmm(b_enc, xc, W_enc), k)
    return ScreenResult(values, indices, 0)


def _candidate_values(xc: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor) -> Tensor:
    """Exact fp32 pre-activations at idx [B, w]: <xc[b], W_enc[:, idx[b, j]]> + b_enc[idx[b, j]] -> [B, w]."""
    dots = kernels._pair_dots(kernels.Pairs.padded(idx), xc, kernels._rows_of(W_enc))
    return dots.view(idx.shape) + b_enc[idx]


@torch.no_grad()
def screened_topk(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, margin: int | None = None
) -> ScreenResult:
    """Top-k of xc [B, d_in] @ W_enc [d_in, d_sae] + b_enc [d_sae] per row, equal to `exact_topk`'s selection,
    found through a bf16 screen (module docstring). margin: extra candidates per row (default k, at least 1)."""
    n_rows, d_in = xc.shape
    d_sae = W_enc.shape[1]
    margin = k if margin is None else max(margin, 1)
    width = min(k + margin + 1, d_sae)
    if width <= k + 1:
        return exact_topk(xc, W_enc, b_enc, k)
    xb, Wb, bb = xc.bfloat16(), W_enc.bfloat16(), b_enc.bfloat16()
    s_top, s_idx = kernels.topk_select(torch.addmm(bb, xb, Wb), width)
    s_top = s_top.float()
    t = s_top.min(1).values  # the (k + margin + 1)-th screen value: every non-candidate is <= t
    rank = s_top.argsort(1, descending=True)
    cand = s_idx.gather(1, rank[:, : width - 1])
    v = _candidate_values(xc, W_enc, b_enc, cand)
    top_v, pos = v.topk(k + 1, dim=1)
    gamma = (d_in + 1) * U_FP32 / (1 - (d_in + 1) * U_FP32)
    x_norm = xc.norm(dim=1)
    w_max = W_enc.norm(dim=0).max()
    b_max = b_enc.abs().max()
    dW_max = (W_enc - Wb.float()).norm(dim=0).max()
    wb_max = Wb.float().norm(dim=0).max()
    dx_norm = (xc - xb.float()).norm(dim=1)
    delta = gamma * (x_norm * w_max * (1 + U_BF16) ** 2 + b_max)
    E = x_norm * dW_max + dx_norm * wb_max + U_BF16 * b_max + delta
    f_t = t + U_BF16 / (1 - U_BF16) * t.abs()
    kth = top_v[:, k - 1] - 2 * delta
    screened = kth > f_t + E + delta  # every non-candidate is below the k-th candidate
    certified = screened & (kth > top_v[:, k] + 2 * delta)
    values, indices = top_v[:, :k].contiguous(), cand.gather(1, pos[:, :k])
    bad = (~certified).nonzero().squeeze(1)
    if len(bad):
        exact = exact_topk(xc[bad], W_enc, b_enc, k)
        values[bad], indices[bad] = exact.values, exact.indices
    return ScreenResult(values, indices, len(bad), int((screened & ~certified).sum()))
