"""A certified low-precision screen for TopK pre-activations: bf16 GEMM, exact values for the candidates only.

The exact TopK step needs pre = xc @ W_enc + b_enc [B, d_sae] only to find each row's k largest entries, and
their values. The screen finds them from a cheaper product and proves it found the right ones:

    s   = bf16(xc) @ bf16(W_enc) + bf16(b_enc)             [B, d_sae] in bf16 (oneDNN: fp32 accumulation)
    C   = the entries of s >= t per row                     candidates; t = a level about k + 5/8 margin reach
    v   = fp32 <xc[b], W_enc[:, j]> + b_enc[j], j in C      (latent-major dot products, kernels._pair_dots)
    top = the k largest of v                                the answer, once certified

The contract is the TopK of the real-arithmetic pre-activations y = xc . w_j + b_j (the one every fp32 kernel
approximates; two fp32 kernels that sum in another order can disagree only where y's k-th and (k+1)-th lie
within their rounding of each other).

Error bounds (u = 2^-8 bf16 unit roundoff, g(n, u) = n u / (1 - n u), w = max_j ||w_j||). fp32 evaluation is
within d = g(d_in + 1, 2^-24) (||xc|| w + max|b|) of y. The bias rides in the GEMM as an input dimension of ones.
With dx = xc - bf16(xc) measured and |bf16(a) - a| <= u |a| per element, Cauchy-Schwarz bounds the screen:
    |s_j - y_j| <= ||xc|| u w + ||dx|| (1 + u) w + u max|b| + g(d_in + 1, 2^-24)(1 + u)((1 + u) ||xc|| w + max|b|)
                   + (d_in + 1) 2^-126 (1 + max|xc| + w)  +  u/(1-u) |s_j|  =  E + u/(1-u) |s_j|
(the 2^-126 term covers inputs and products flushed to zero as subnormals; bf16 x bf16 products are exact in
fp32, the bf16 output's rounding is the last term).
The level t of a row is the (k + r)-th largest maximum of its strided groups of 8 latents, so at least k + r
entries reach it without any top-k over the row (rows it does not screen take their top k + margin of s, t the
next value, as a second pass). A non-candidate has s_j <= t, so y_j <= f(t) + E with f(t) = t + u/(1-u)|t|
increasing. A row is

- *screened* when v_(k) - d > f(t) + E: at least k candidates have y >= v_(k) - d, above every non-candidate,
  so the real top k are candidates;
- *certified in fp32* when also v_(k) - v_(k+1) > 2d: the top k of v are the top k of y;
- otherwise a *near tie*: candidates within 2d of the boundary (v in [v_(k+1) - 2d, v_(k) + 2d]) are recomputed
  in float64 (those above it are in the top k, those below it out), and the top k of the float64 values decide,
  certified when their boundary gap exceeds float64's own bound (2 g(d_in + 1, 2^-53)(...)).

Rows that are not screened, and near ties that float64 does not separate either, fall back to their dense fp32
rows (counted), read as a screen whose error is d: that settles them the same way, so the answer does not depend
on the bf16 product's rounding (which varies with the thread count); rows even they leave open (real ties:
duplicated latents) take the dense row's top k. The values returned are the fp32 dot products v of the selected
latents (the dense GEMM's up to fp32 rounding, d), each row in ascending latent order.

BatchTopK needs no row's top k, only the batch's n_keep largest: `screened_batch_topk` takes every entry whose
screen value may reach one level L for the whole batch (s >= f^-1(L - E_b) in row b), so a non-candidate's fp32
value is below cap = max_b L + d_b, and the n_keep-th largest candidate value tau is the batch's own once cap <= tau.
With L estimated a little below tau, the candidates are about 2 k per row, where the row-wise screen takes 4 k plus
its margin (the top 2k of every row that BatchTopK's exact row-wise rule offers).

`screened_topk` is the fast path; `exact_topk` is the eager reference (tests/sae/test_screen.py checks both
against float64 TopK, and the values and gradients against the dense ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from saeforge.sae import kernels

if TYPE_CHECKING:
    from saeforge.distributed import Collectives

U_BF16 = 2.0**-8
U_FP32 = 2.0**-24


@dataclass
class ScreenResult:
    """values, indices [B, k] (ascending latent within a row); fallback: rows that took their dense fp32 row (not
    screened, or a real tie); near_ties: rows whose k-th and (k+1)-th fp32 values lie within fp32's own error
    bound of each other, decided in float64 (module docstring); rescreened: rows the margin did not screen that a
    wider candidate set did."""

    values: Tensor
    indices: Tensor
    fallback: int
    near_ties: int = 0
    rescreened: int = 0


def exact_topk(xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> ScreenResult:
    """The reference: xc [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae] -> top-k of the fp32 pre-activations."""
    with torch.no_grad():
        values, indices = kernels.topk_select(torch.addmm(b_enc, xc, W_enc), k)
    return ScreenResult(values, indices, 0)


def _candidate_values(xc: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor) -> Tensor:
    """Exact fp32 pre-activations at idx [B, w]: <xc[b], W_enc[:, idx[b, j]]> + b_enc[idx[b, j]] -> [B, w]."""
    dots = kernels._pair_dots(kernels.Pairs.padded(idx), xc, kernels._rows_of(W_enc))
    return dots.view(idx.shape) + b_enc[idx]


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _evaluation_bounds(xc: Tensor, W_enc: Tensor, b_enc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row of xc: (d, d64, ||xc||, max_j ||w_j||), d and d64 bounding how far an fp32 / float64 evaluation
    of any pre-activation xc . w_j + b_j lies from the real value: g(d_in + 1, u) (||xc|| max||w_j|| + max|b|)."""
    d_in, x_norm, w_max, b_max = xc.shape[1], xc.norm(dim=1), W_enc.norm(dim=0).max(), b_enc.abs().max()
    delta = _gamma(d_in + 1, U_FP32) * (x_norm * w_max + b_max)
    d64 = _gamma(d_in + 1, 2.0**-53) * (x_norm.double() * float(w_max) + float(b_max))
    return delta, d64, x_norm, w_max


def _float64_values(xc: Tensor, W_rows: Tensor, b_enc: Tensor, rows: Tensor, latents: Tensor) -> Tensor:
    """float64 <xc[rows[p]], W_rows[latents[p]]> + b_enc[latents[p]] for a few pairs p -> [p] float64."""
    out = torch.empty(len(rows), dtype=torch.float64, device=xc.device)
    for i in range(0, len(rows), 4096):  # [4096, d_in] float64 blocks: bounded memory
        r, j = rows[i : i + 4096], latents[i : i + 4096]
        out[i : i + 4096] = (xc[r].double() * W_rows[j].double()).sum(1) + b_enc[j].double()
    return out


def _float64_topk(xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """For the few rows nothing else settles (real ties): the top k of float64 pre-activations over every
    latent, computed in blocks of latents; fp32 values of the chosen latents."""
    blocks = zip(W_enc.split(4096, 1), b_enc.split(4096), strict=True)
    pre = torch.cat([xc.double() @ W.double() + b.double() for W, b in blocks], 1)
    idx = pre.topk(k, dim=1).indices
    return _candidate_values(xc, W_enc, b_enc, idx), idx


def rows_above(xc: Tensor, W_enc: Tensor, b_enc: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
    """Every latent of rows xc [R, d_in] whose pre-activation may reach level [R] (real arithmetic), with its
    exact fp32 value: (values, indices) [R, w], ascending latent, padded with -inf (index 0). A superset found
    from the dense fp32 rows (whose rounding varies with the thread count) with fp32's bound to spare, so every
    latent whose value is >= level is in it whatever the rounding, with the same value."""
    dense = torch.addmm(b_enc, xc, W_enc)
    slack = 2 * _evaluation_bounds(xc, W_enc, b_enc)[0]
    rows, latents = (dense >= (level - slack)[:, None]).nonzero(as_tuple=True)  # row-major: ascending latent
    counts = torch.bincount(rows, minlength=len(xc))
    width = max(int(counts.max()), 1) if len(rows) else 1
    slot = torch.arange(len(rows), device=xc.device) - (counts.cumsum(0) - counts)[rows]
    values = torch.full((len(xc), width), -torch.inf, dtype=xc.dtype, device=xc.device)
    indices = torch.zeros((len(xc), width), dtype=torch.long, device=xc.device)
    pairs = kernels.Pairs.of_tokens(latents, rows, len(xc))
    exact = kernels._pair_dots(pairs, xc, kernels._rows_of(W_enc)) + b_enc[latents]
    values[rows, slot], indices[rows, slot] = exact, latents
    return values, indices


@dataclass
class _Rows:
    """What every pass over a subset of rows shares: the screen product s [B, d_sae], the exact operands and each
    row's bounds (delta: fp32 evaluation; E: the screen's additive error; u: the relative rounding of s, bf16's,
    or 0 for the dense fp32 rows read as a screen whose error is delta)."""

    s: Tensor
    xc: Tensor
    W_enc: Tensor
    b_enc: Tensor
    delta: Tensor
    E: Tensor
    d64: Tensor
    u: float = U_BF16


def _certify(
    c: _Rows, rows: Tensor, k: int, width: int, values: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor, int]:
    """One pass over `rows` with the top `width` screen values as candidates (the width-th is t): writes the
    certified rows' selection into values/indices [B, k]; returns (rows not screened, real ties, near ties)."""
    n_rows = len(rows)
    s_top, s_idx = kernels.topk_select(c.s[rows] if n_rows < len(c.s) else c.s, width)
    t, last = s_top.float().min(1)  # every non-candidate is <= t
    cand = s_idx[torch.ones_like(s_idx, dtype=torch.bool).scatter_(1, last[:, None], False)]
    cand = cand.view(n_rows, width - 1)
    v = _candidate_values(c.xc[rows], c.W_enc, c.b_enc, cand)
    return _settle(c, rows, k, cand, v, t, values, indices)


def _level_pass(c: _Rows, k: int, r: int, values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor, int]:
    """The first pass over every row, without a top-k of s: the candidates of row b are its entries >= L_b, the
    (k + r)-th largest maximum of its strided groups of 8 (`_group_max`), so at least k + r of them (a group whose
    maximum reaches L_b holds one) and rarely many more; every non-candidate has s < L_b. Returns what `_certify`
    does."""
    n_rows, d = c.s.shape
    rows = torch.arange(n_rows, device=c.s.device)
    if d % 8 or k + r > d // 8:
        return rows, rows[:0], 0
    gm = _group_max(c.s)
    level = _kth_largest(
        gm, k + r
    )  # exact where >= 0: those rows' top k + r groups hold non-negative entries
    if len(below := (level < 0).nonzero().squeeze(1)):
        _exact_below_zero(c.s, gm, below)
        level[below] = _kth_largest(gm[below], k + r)
    level = _value(level)
    at, latents = _at_least(c.s, level, gm)
    counts = torch.bincount(at, minlength=n_rows)
    slot = torch.arange(len(at), device=at.device) - (counts.cumsum(0) - counts)[at]
    exact = kernels._pair_dots(kernels.Pairs.of_tokens(latents, at, n_rows), c.xc, kernels._rows_of(c.W_enc))
    v = torch.full((n_rows, int(counts.max())), -torch.inf, dtype=c.xc.dtype, device=c.xc.device)
    cand = torch.zeros(v.shape, dtype=torch.long, device=c.xc.device)
    v[at, slot], cand[at, slot] = exact + c.b_enc[latents], latents
    return _settle(c, rows, k, cand, v, level.float(), values, indices)


def _settle(
    c: _Rows, rows: Tensor, k: int, cand: Tensor, v: Tensor, t: Tensor, values: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor, int]:
    """The certificate of `rows` from their candidates cand [R, w] (latent ids; padding has v = -inf), their
    exact fp32 values v [R, w] and t [R], a screen value no non-candidate exceeds: writes the rows' top k of v
    into values/indices [B, k]; returns (rows not screened, real ties, near ties)."""
    top_v, pos = v.topk(k + 1, dim=1)
    hi, lo, delta = top_v[:, k - 1], top_v[:, k], c.delta[rows]
    screened = hi - delta > t + c.u / (1 - c.u) * t.abs() + c.E[rows]
    values[rows], indices[rows] = top_v[:, :k], cand.gather(1, pos[:, :k])
    near = (screened & (hi - lo <= 2 * delta)).nonzero().squeeze(1)
    tied = near[:0]
    if len(near):  # decide the latents within 2 delta of the boundary in float64 (module docstring)
        vn, cn, dn = v[near], cand[near], delta[near, None]
        band = (vn >= lo[near, None] - 2 * dn) & (vn <= hi[near, None] + 2 * dn)
        key = torch.where(vn > hi[near, None] + 2 * dn, torch.inf, -torch.inf).double()
        r, j = band.nonzero(as_tuple=True)
        key[r, j] = _float64_values(c.xc, kernels._rows_of(c.W_enc), c.b_enc, rows[near[r]], cn[r, j])
        kv, kp = key.topk(k + 1, dim=1)
        values[rows[near]], indices[rows[near]] = vn.gather(1, kp[:, :k]), cn.gather(1, kp[:, :k])
        tied = rows[near[kv[:, k - 1] - kv[:, k] <= 2 * c.d64[rows[near]]]]
    return rows[~screened], tied, len(near)


def _screen(xc: Tensor, W_enc: Tensor, b_enc: Tensor) -> _Rows:
    """The bf16 screen product s [B, d_sae] of xc [B, d_in] and every row's bounds (module docstring)."""
    n_rows, d_in = xc.shape
    d_sae = W_enc.shape[1]
    # s = [bf16(xc), 1] @ [bf16(W_enc); bf16(b_enc)]: the bias rides in the GEMM as one more input dimension
    xa = torch.ones(n_rows, d_in + 1, dtype=torch.bfloat16, device=xc.device)
    xa[:, :d_in] = xc
    Wa = torch.empty(d_sae, d_in + 1, dtype=torch.bfloat16, device=xc.device)
    Wa[:, :d_in], Wa[:, d_in] = W_enc.t(), b_enc
    delta, d64, x_norm, w_max = _evaluation_bounds(xc, W_enc, b_enc)
    b_max, g32 = b_enc.abs().max(), _gamma(d_in + 1, U_FP32)
    # per element |bf16(w) - w| <= u |w|, so ||dW_j|| <= u max||w_j|| and ||bf16(w_j)|| <= (1 + u) max||w_j||
    return _Rows(
        s=xa @ Wa.t(),
        xc=xc,
        W_enc=W_enc,
        b_enc=b_enc,
        delta=delta,
        E=x_norm * U_BF16 * w_max
        + (xc - xa[:, :d_in].float()).norm(dim=1) * (1 + U_BF16) * w_max
        + U_BF16 * b_max
        + g32 * (1 + U_BF16) * (x_norm * (1 + U_BF16) * w_max + b_max)
        + (d_in + 1) * 2.0**-126 * (1 + xc.abs().amax(1) + w_max),  # subnormals flushed to zero
        d64=d64,
    )


def default_margin(k: int) -> int:
    """Extra candidates per row: k + 64, the fastest of those measured for k 64 and 128 (docs/benchmarks.md)."""
    return k + 64


def worth_screening(k: int, d_sae: int) -> bool:
    """Whether a top-k over d_sae latents leaves the screen anything to skip (else it is the dense product)."""
    return k + default_margin(k) + 1 < d_sae


@torch.no_grad()
def real_topk(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, margin: int | None = None
) -> tuple[Tensor, Tensor]:
    """(values, indices) [R, k], ascending latent: the real-arithmetic top k of rows xc [R, d_in] from their
    dense fp32 product read as a screen whose error is fp32's own (d), so the answer is the same whatever the
    thread count, which the bits of a few-row GEMM are not; real ties take the float64 top k."""
    d = W_enc.shape[1]
    width = min(k + (default_margin(k) if margin is None else max(margin, 1)) + 1, d)
    if width < k + 2:
        values, indices = _float64_topk(xc, W_enc, b_enc, k)
    else:
        delta, d64 = _evaluation_bounds(xc, W_enc, b_enc)[:2]
        dense = _Rows(torch.addmm(b_enc, xc, W_enc), xc, W_enc, b_enc, delta, delta, d64, u=0.0)
        values = torch.empty(len(xc), k, dtype=xc.dtype, device=xc.device)
        indices = torch.empty(len(xc), k, dtype=torch.long, device=xc.device)
        left, tied, _ = _certify(dense, torch.arange(len(xc), device=xc.device), k, width, values, indices)
        if len(rest := torch.cat([left, tied])):
            values[rest], indices[rest] = _float64_topk(xc[rest], W_enc, b_enc, k)
    indices, order = indices.sort(1)
    return values.gather(1, order), indices


@torch.no_grad()
def screened_topk(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, margin: int | None = None
) -> ScreenResult:
    """Top-k of xc [B, d_in] @ W_enc [d_in, d_sae] + b_enc [d_sae] per row, the real-arithmetic TopK's selection,
    found through a bf16 screen (module docstring). margin: extra candidates per row (default `default_margin`).
    The first pass takes each row's entries at or above one level (`_level_pass`: about k + 5/8 margin of them,
    found without a top-k of s); rows it does not screen take the top k + margin, then four and sixteen times
    the margin, of the same bf16 product; what that leaves (and real ties) takes its dense fp32 row."""
    n_rows, d_sae = xc.shape[0], W_enc.shape[1]
    margin = default_margin(k) if margin is None else max(margin, 1)
    if k + margin + 1 >= d_sae:
        return exact_topk(xc, W_enc, b_enc, k)
    c = _screen(xc, W_enc, b_enc)
    values = torch.empty(n_rows, k, dtype=xc.dtype, device=xc.device)
    indices = torch.empty(n_rows, k, dtype=torch.long, device=xc.device)
    # the first pass's level: the (k + 5/8 margin)-th group maximum, the fastest measured (docs/benchmarks.md)
    rows, tied, n_near = _level_pass(c, k, max(5 * margin // 8, 1), values, indices)
    ties, n_wider = [tied], len(rows)
    for m in (margin, 4 * margin, 16 * margin):
        if not len(rows) or k + m + 1 >= d_sae:
            break
        rows, tied, near = _certify(c, rows, k, k + m + 1, values, indices)
        ties.append(tied)
        n_near += near
    bad = torch.cat([rows, *ties])
    if len(bad):
        values[bad], indices[bad] = real_topk(xc[bad], W_enc, b_enc, k, margin)
    # one order for one answer (ascending latent): the pairs' order is the decode's summation order
    indices, order = indices.sort(1)
    return ScreenResult(values.gather(1, order), indices, len(bad), n_near, n_wider - len(rows))


@dataclass
class BatchSelection:
    """The batch rule's kept pairs: values [n] (their fp32 pre-activations), tokens [n] (non-decreasing),
    latents [n] (ascending within a token); candidates: the pairs whose exact values were computed."""

    values: Tensor
    tokens: Tensor
    latents: Tensor
    candidates: int


def _key(bits: Tensor) -> Tensor:
    """int16 bits of bf16 values -> int16 keys that order as the values do, equal values (+0 and -0) equal keys:
    a non-negative value's bits, minus a negative one's magnitude bits."""
    return torch.where(bits >= 0, bits, -(bits & 0x7FFF))


def _value(key: Tensor) -> Tensor:
    """The bf16 values of keys (`_key`'s inverse; a zero key is +0)."""
    return torch.where(key >= 0, key, (-key) | -0x8000).view(torch.bfloat16)


def _group_max(s: Tensor) -> Tensor:
    """s [B, d] bf16 (d a multiple of 8) -> int16 [B, d // 8]: the largest int16 bits of each strided group of 8
    latents {g, g + d/8, ...}. Non-negative bf16 values order as their bits and every negative one is below
    them, so that is the key (`_key`) of the group's largest entry where the group holds a non-negative one, and
    a negative number otherwise: exact against any level >= 0; `_exact_below_zero` makes rows exact for the rest."""
    n_rows, d = s.shape
    return s.view(torch.int16).view(n_rows, 8, d // 8).amax(1)


def _exact_below_zero(s: Tensor, gm: Tensor, rows: Tensor) -> None:
    """Makes gm's rows `rows` the keys of every group's largest entry, the groups of negative entries included
    (among negative values bits order reversed: the key of the smallest bits), in place."""
    n_rows, d = s.shape
    low = s.view(torch.int16).view(n_rows, 8, d // 8)[rows].amin(1)
    gm[rows] = torch.where(gm[rows] >= 0, gm[rows], _key(low))


def _kth_largest(keys: Tensor, n: int) -> Tensor:
    """keys [B, g] int16 -> [B], each row's n-th largest (numpy's introselect on CPU: 4x torch.topk here)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(
            np.partition(keys.numpy(), keys.shape[1] - n, axis=1)[:, keys.shape[1] - n].copy()
        )
    return keys.topk(n, dim=1, sorted=False).values.amin(1)


def _at_least(s: Tensor, level: Tensor, gm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(rows, latents) of the entries of s [B, d] (bf16, no NaN) >= level [B] (bf16), row-major. The maxima of
    strided groups of 8 latents (`_group_max`, or gm when already computed) rule out most of s before any entry
    is compared; the comparisons run on keys (`_key`). A gm given must be exact in the rows of negative levels."""
    n_rows, d = s.shape
    if d % 8:
        return (s >= level[:, None]).nonzero(as_tuple=True)
    bits, lk = s.view(torch.int16).view(n_rows, 8, d // 8), _key(level.view(torch.int16))
    if gm is None:
        gm = _group_max(s)
        _exact_below_zero(s, gm, (lk < 0).nonzero().squeeze(1))
    r, g = (gm >= lk[:, None]).nonzero(as_tuple=True)
    hit, i = (_key(bits[r, :, g]) >= lk[r, None]).nonzero(as_tuple=True)
    key = r[hit] * d + g[hit] + i * (d // 8)
    key = torch.from_numpy(np.sort(key.numpy())) if key.device.type == "cpu" else key.sort().values
    return key // d, key % d


@torch.no_grad()
def screened_batch_topk(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, n_keep: int, collectives: Collectives
) -> BatchSelection | None:
    """BatchTopK's rule through the bf16 screen, over the whole batch at once: every (token, latent) whose fp32
    pre-activation v is positive and among the n_keep largest of the batch (every rank's slice), or None where
    the screen does not certify that (the caller then takes the row-wise path).

    A level L is estimated from a fixed random sample of s: the value (1 + rho) n_keep entries of the batch
    reach. The candidates at that level (`_candidates`) are certified or not (`_certified`); a level that fails
    is lowered once (a larger rho), and a batch whose values spread so flat that the candidates would outnumber
    8 (1 + rho) n_keep is left to the row-wise path.
    """
    c = _screen(xc, W_enc, b_enc)
    flat = c.s.view(-1)
    # the same sample every step (it decides a cost, not the answer): 2^20 entries at most
    gen = torch.Generator(device=flat.device).manual_seed(0)
    at = torch.randint(flat.numel(), (min(flat.numel(), 1 << 20),), generator=gen, device=flat.device)
    sample = flat[at].float()
    share = n_keep / int(collectives.all_reduce_sum(torch.tensor(flat.numel(), device=xc.device)))
    for rho in (1 / 8, 1.0):
        rank = min(sample.numel(), max(1, round(share * (1 + rho) * sample.numel())))
        level = collectives.all_gather_cat(sample.topk(rank).values[-1:]).min().double()
        rows, latents, cap = _candidates(c, level, collectives)
        n_candidates = int(collectives.all_reduce_sum(torch.tensor(len(rows), device=xc.device)))
        if n_candidates > 8 * (1 + rho) * n_keep:
            return None
        if sel := _certified(c, rows, latents, cap, n_keep, collectives):
            return sel
    return None


def _candidates(c: _Rows, level: Tensor, collectives: Collectives) -> tuple[Tensor, Tensor, float]:
    """The entries that may reach `level` (real arithmetic): (rows, latents) row-major, every entry with s >= t_b,
    t_b the bf16 at or below f^-1(level - E_b), f(t) = t + u/(1-u)|t| (module docstring), and cap: a non-candidate
    has y < f(t_b) + E_b <= level, so its fp32 value v < cap = max over every rank's rows of f(t_b) + E_b + d_b."""
    E, d = c.E.double(), c.delta.double()
    t = _bf16_below(_f_inv(level - E))
    rows, latents = _at_least(c.s, t)
    cap = float(collectives.all_gather_cat((_f(t.double()) + E + d).max().reshape(1)).max())
    return rows, latents, cap


def _certified(
    c: _Rows, rows: Tensor, latents: Tensor, cap: float, n_keep: int, collectives: Collectives
) -> BatchSelection | None:
    """The batch rule over the candidates (rows, latents) with their exact fp32 values v, when it is the batch's:
    tau, the n_keep-th largest v of every rank's candidates (-inf with fewer), is the batch's own n_keep-th
    largest when cap <= tau, every non-candidate being below it; cap <= 0 suffices when tau <= 0, as nothing at or
    below 0 is kept. None otherwise."""
    pairs = kernels.Pairs.of_tokens(latents, rows, len(c.xc))
    v = kernels._pair_dots(pairs, c.xc, kernels._rows_of(c.W_enc)) + c.b_enc[latents]
    every = collectives.all_gather_cat(v)
    tau = float(every.kthvalue(len(every) - n_keep + 1).values) if len(every) >= n_keep else -torch.inf
    if cap > max(tau, 0.0):
        return None
    keep = (v >= tau) & (v > 0)
    return BatchSelection(v[keep], rows[keep], latents[keep], len(rows))


_U = U_BF16 / (1 - U_BF16)  # the screen's relative rounding: |s - y| <= E + _U |s|


def _f(t: Tensor) -> Tensor:
    """The largest real value an entry whose screen value is t may have, less E: t + _U |t| (increasing)."""
    return t + _U * t.abs()


def _f_inv(z: Tensor) -> Tensor:
    return torch.where(z >= 0, z / (1 + _U), z / (1 - _U))


def _bf16_below(z: Tensor) -> Tensor:
    """The largest bf16 values <= z (float64)."""
    t = z.to(torch.bfloat16)
    return torch.where(t.double() > z, torch.nextafter(t, t.new_tensor(-torch.inf)), t)
