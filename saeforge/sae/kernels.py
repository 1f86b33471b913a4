"""Hot paths of the TopK family, each behind one function with an eager reference beside it.

The TopK-family pattern (architectures choose *which* latents fire; kernels make that cheap):

    with torch.no_grad():
        pre = x @ W_enc + b_enc                      # [B, d_sae], forward only, no dense gradient
    idx = <architecture's selection>(pre)            # [B, w] latent indices (top-k, batch top-k, AuxK, ...)
    vals = gather_preacts(x, W_enc, b_enc, pre, idx) # [B, w] differentiable; gradients touch only idx columns
    x_hat = sparse_decode(idx, vals.relu(), W_dec) + b_dec

`gather_preacts` returns pre[b, idx[b, j]] with gradients w.r.t. x, W_enc and b_enc that equal those of the
dense expression `(x @ W_enc + b_enc).gather(1, idx)`. `sparse_decode` returns sum_j vals[b, j] W_dec[idx[b, j]].
`topk_select(pre, k)` is an exact, faster `pre.topk(k, dim=1)` for wide rows. (The optimiser that keeps column-major
parameters copy-free is `saeforge.train.optim.Adam`.) The `_eager` functions are the references the fast paths are
tested against (values and gradients).

How the fast paths stay sparse (B tokens, w selected latents per token, n = B * w pairs):
- every gradient is a sum over the n (token, latent) pairs; the ones indexed by latent (W_enc's columns,
  W_dec's rows) are computed latent-major: the pairs are sorted by latent once and summed with
  `F.embedding_bag` (one bag per latent), which costs O(n * d_in) and writes each output row once;
- x's gradient is a token-major `F.embedding_bag` over W_enc^T rows; vals' gradient (per-pair dot products) runs
  latent-major too, so each W_dec row is read once.
W_enc's gradient is produced as [d_sae, d_in] rows and handed back as its transpose, so a W_enc stored
column-major (`W_enc.t().is_contiguous()`, as `W_dec.T.clone()` gives) needs no transposing copy at all; a
row-major W_enc costs one transposing copy each way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def gather_preacts_eager(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
    """x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], pre [B, d_sae] (unused), idx [B, w] -> [B, w]."""
    del pre
    return (x @ W_enc + b_enc).gather(1, idx)


def sparse_decode_eager(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """idx [B, w], vals [B, w], W_dec [d_sae, d_in] -> [B, d_in] (no b_dec)."""
    return (vals.unsqueeze(-1) * W_dec[idx]).sum(-2)


def topk_select_eager(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """pre [B, d_sae] -> (values [B, k], indices [B, k]) of the k largest entries of each row (any order)."""
    values, indices = pre.topk(k, dim=1, sorted=False)
    return values, indices


def _order_by_latent(flat: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """flat [n] latent ids -> (order [n] putting equal ids together in increasing id, offsets [d_sae] where each
    id's run starts). On CPU numpy's vectorised argsort is an order of magnitude faster than torch.sort here."""
    if flat.device.type == "cpu":
        order = torch.from_numpy(np.argsort(flat.numpy()))
        counts = torch.from_numpy(np.bincount(flat.numpy(), minlength=d_sae))
    else:
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=d_sae)
    return order, counts.cumsum(0) - counts


def _latent_major_sum(
    idx: Tensor, weights: Tensor, rows: Tensor, d_sae: int, sorted_pairs: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """out[i] = sum over (b, j) with idx[b, j] == i of weights[b, j] * rows[b].

    idx [B, w] int64, weights [B, w], rows [B, d] -> [d_sae, d]. Latents never selected get zero rows.
    sorted_pairs: `_order_by_latent(idx.reshape(-1), d_sae)` when already computed.
    """
    order, offsets = sorted_pairs or _order_by_latent(idx.reshape(-1), d_sae)
    tokens = torch.div(order, idx.shape[1], rounding_mode="floor")
    return F.embedding_bag(
        tokens, rows, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order].to(rows.dtype)
    )


def _pair_dots(idx: Tensor, rows: Tensor, table: Tensor, sorted_pairs: tuple[Tensor, Tensor]) -> Tensor:
    """out[b, j] = <rows[b], table[idx[b, j]]>: idx [B, w], rows [B, d], table [d_sae, d] -> [B, w].

    Computed latent-major (each table row is read once, the small `rows` are gathered), with the kernel
    torch uses for embedding_bag's per-sample-weight gradient: its "bags" are the latents.
    """
    order, offsets = sorted_pairs
    tokens = torch.div(order, idx.shape[1], rounding_mode="floor")
    latent_of_pair = idx.reshape(-1)[order]
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        table.contiguous(), rows.contiguous(), tokens, offsets, latent_of_pair, 0, -1
    )
    return torch.empty_like(dots).index_put_((order,), dots).view(idx.shape)


def _token_major_sum(idx: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """out[b] = sum_j weights[b, j] * table[idx[b, j]]: idx [B, w], weights [B, w], table [n, d] -> [B, d]."""
    return F.embedding_bag(idx, table, mode="sum", per_sample_weights=weights.to(table.dtype))


def _rows_of(W_enc: Tensor) -> Tensor:
    """W_enc [d_in, d_sae] -> W_enc^T [d_sae, d_in] contiguous (a view when W_enc is stored column-major)."""
    return W_enc.t().contiguous()


class _GatherPreacts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, idx)
        ctx.d_sae = W_enc.shape[1]
        return pre.gather(1, idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, W_enc, idx = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = _token_major_sum(idx, grad, _rows_of(W_enc)).to(x.dtype)
        if need_w:
            grad_w = _latent_major_sum(idx, grad, x.to(W_enc.dtype), ctx.d_sae).t()
        if need_b:
            grad_b = torch.zeros(ctx.d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


class _SelectedPreacts(_GatherPreacts):
    """Like _GatherPreacts, from the selected pre-activations themselves instead of the dense [B, d_sae]."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, vals: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, idx)
        ctx.d_sae = W_enc.shape[1]
        return vals.clone()


def selected_preacts(x: Tensor, W_enc: Tensor, b_enc: Tensor, vals: Tensor, idx: Tensor) -> Tensor:
    """vals [B, w] = (x @ W_enc + b_enc)[b, idx[b, j]] computed elsewhere (no grad) -> the same values, with
    `gather_preacts`' gradients w.r.t. x [B, d_in], W_enc [d_in, d_sae] and b_enc [d_sae]."""
    return _SelectedPreacts.apply(x, W_enc, b_enc, vals.detach(), idx)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(idx, vals, W_dec)
        return _token_major_sum(idx, vals, W_dec)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        idx, vals, W_dec = ctx.saved_tensors
        grad_vals = grad_w = None
        sorted_pairs = _order_by_latent(idx.reshape(-1), W_dec.shape[0])
        if ctx.needs_input_grad[1]:
            grad_vals = _pair_dots(idx, grad.to(W_dec.dtype), W_dec, sorted_pairs).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            grad_w = _latent_major_sum(idx, vals, grad.to(W_dec.dtype), W_dec.shape[0], sorted_pairs)
        return None, grad_vals, grad_w


def gather_preacts_fast(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
    """x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], pre [B, d_sae] (no grad), idx [B, w] int64 -> [B, w].

    Returns pre.gather(1, idx); the backward touches only the selected columns of W_enc.
    """
    return _GatherPreacts.apply(x, W_enc, b_enc, pre.detach(), idx)


def sparse_decode_fast(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """idx [B, w] int64, vals [B, w], W_dec [d_sae, d_in] -> [B, d_in] = sum_j vals[b, j] W_dec[idx[b, j]]."""
    return _SparseDecode.apply(idx, vals, W_dec)


def _group_size(d_sae: int, k: int) -> int:
    """Strided group size for `topk_select_fast`: 16 (fastest on CPU at d_sae=24576, k=64) or 8, dividing
    d_sae and leaving at least 8k groups; 0 when neither does."""
    for s in (16, 8):
        if d_sae % s == 0 and d_sae // s >= 8 * k:
            return s
    return 0


def topk_select_fast(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """pre [B, d_sae] -> (values [B, k], indices [B, k]), the k largest entries of each row (any order).

    Exact. The row is cut into G strided groups {g, g + G, g + 2G, ...} of s elements; the top k entries lie in
    the k groups with the largest maxima (an entry in the top k is >= m_k, the k-th largest group maximum, so
    its group's maximum is too). Within those groups only entries >= m_k can make the top k: each group's best
    two are kept and the top k is taken among those 2k. Rows where a group holds three or more entries >= m_k
    take the top k of their k * s candidates instead. torch.topk over a few short rows replaces one over the
    whole row, which on CPU is several times faster. Ties may resolve to other indices than `torch.topk` (the
    values agree). Narrow rows, autograd inputs and non-contiguous inputs use `torch.topk`.
    """
    n_rows, d_sae = pre.shape
    s = _group_size(d_sae, k)
    if pre.requires_grad or not s or not pre.is_contiguous():
        return topk_select_eager(pre, k)
    n_groups = d_sae // s
    grouped = pre.view(n_rows, s, n_groups)
    top_group_max, groups = grouped.amax(1).topk(k, dim=1, sorted=False)
    m_k = top_group_max.amin(1, keepdim=True)
    cand = grouped.gather(2, groups.unsqueeze(1).expand(n_rows, s, k))
    first, first_pos = cand.max(1)
    second, second_pos = cand.scatter(1, first_pos.unsqueeze(1), float("-inf")).max(1)
    values, which = torch.cat([first, second], 1).topk(k, dim=1, sorted=False)
    pos = torch.cat([first_pos, second_pos], 1).gather(1, which)
    group = groups.gather(1, which.remainder(k))
    crowded = ((cand >= m_k.unsqueeze(1)).sum(1) > 2).any(1).nonzero().squeeze(1)
    if len(crowded):
        block = cand[crowded].view(len(crowded), s * k)
        values[crowded], j = block.topk(k, dim=1, sorted=False)
        pos[crowded] = torch.div(j, k, rounding_mode="floor")
        group[crowded] = groups[crowded].gather(1, j.remainder(k))
    return values, group + n_groups * pos


gather_preacts = gather_preacts_fast
sparse_decode = sparse_decode_fast
topk_select = topk_select_fast
