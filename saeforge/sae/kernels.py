"""Hot paths of the TopK family, each behind one function with an eager reference beside it.

The TopK-family pattern (architectures choose *which* latents fire; kernels make that cheap):

    with torch.no_grad():
        pre = x @ W_enc + b_enc                        # [B, d_sae], forward only, no dense gradient
    pairs = <architecture's selection>(pre)            # selected (token, latent) pairs: top-k, batch top-k, AuxK
    vals = gather_preacts(x, W_enc, b_enc, pre, pairs) # [n] differentiable; gradients touch selected columns only
    x_hat = sparse_decode(pairs, vals.relu(), W_dec) + b_dec

The pairs are `Pairs`, token-major (CSR: each token's latent ids, then offsets): a token holds any number of
them (BatchTopK), and the same w for every token is the special case `Pairs.padded(idx)` of an idx [B, w]
(TopK, AuxK); the functions also take such an idx directly and then answer [B, w] instead of [n].
`gather_preacts` returns pre at the pairs with gradients w.r.t. x, W_enc and b_enc that equal those of the dense
expression `(x @ W_enc + b_enc)[tokens, latents]`. `sparse_decode` returns, per token, the sum over its pairs of
vals * W_dec[latent].
`topk_select(pre, k)` is an exact, faster `pre.topk(k, dim=1)` for wide rows. (The optimiser that keeps column-major
parameters copy-free is `saeforge.train.optim.Adam`.) The `_eager` functions are the references the fast paths are
tested against (values and gradients).

How the fast paths stay sparse (B tokens, n selected pairs; n = B * w when padded):
- every gradient is a sum over the n (token, latent) pairs; the ones indexed by latent (W_enc's columns,
  W_dec's rows) are computed latent-major: the pairs are sorted by latent once and summed with
  `F.embedding_bag` (one bag per latent, each pair naming its token), which costs O(n * d_in) and writes each
  output row once;
- x's gradient is a token-major `F.embedding_bag` over W_enc^T rows (one bag per token, from the offsets); vals'
  gradient (per-pair dot products) runs latent-major too, so each W_dec row is read once.
W_enc's gradient is produced as [d_sae, d_in] rows and handed back as its transpose, so a W_enc stored
column-major (`W_enc.t().is_contiguous()`, as `W_dec.T.clone()` gives) needs no transposing copy at all; a
row-major W_enc costs one transposing copy each way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Pairs:
    """The selected (token, latent) pairs of a batch of B tokens, token-major (CSR): token b's pairs are
    latents[offsets[b]:offsets[b + 1]] (offsets[B] = n implied), so a token may hold any number of them, zero
    included. latents [n] int64, offsets [B] int64 (each token's first pair), tokens [n] int64 (each pair's
    token, non-decreasing). Per-pair tensors (values, gradients) are [n] in this order.

    `Pairs.padded(idx)` is the special case of w pairs for every token: idx [B, w], pair b * w + j is idx[b, j].
    """

    latents: Tensor
    offsets: Tensor
    tokens: Tensor

    @property
    def n_rows(self) -> int:
        return self.offsets.shape[0]

    @staticmethod
    def padded(idx: Tensor) -> Pairs:
        """idx [B, w] latent ids -> w pairs per token."""
        n_rows, width = idx.shape
        rows = torch.arange(n_rows, device=idx.device)
        return Pairs(idx.reshape(-1), rows * width, rows.repeat_interleave(width))

    @staticmethod
    def of_tokens(latents: Tensor, tokens: Tensor, n_rows: int) -> Pairs:
        """latents [n] with their tokens [n] (non-decreasing, < n_rows) -> the pairs of n_rows tokens."""
        counts = torch.bincount(tokens, minlength=n_rows)
        return Pairs(latents, counts.cumsum(0) - counts, tokens)

    @staticmethod
    def masked(idx: Tensor, keep: Tensor) -> Pairs:
        """idx [B, w] latent ids, keep [B, w] bool -> the pairs where keep is true (each row in idx's order)."""
        rows, cols = keep.nonzero(as_tuple=True)
        return Pairs.of_tokens(idx[rows, cols], rows, idx.shape[0])

    def regroup(self, part: Tensor, n_parts: int) -> tuple[Tensor, Pairs]:
        """part [n] in [0, n_parts) -> (order [n], pairs over n_parts * B rows in which token b's pairs of part
        g are row g * B + b); `v[order]` carries a per-pair tensor v over to the new pairs."""
        order = part.argsort(stable=True)
        rows = (part * self.n_rows + self.tokens)[order]
        return order, Pairs.of_tokens(self.latents[order], rows, n_parts * self.n_rows)


def _pairs_of(idx: Tensor | Pairs) -> Pairs:
    return idx if isinstance(idx, Pairs) else Pairs.padded(idx)


def _shaped(flat: Tensor, idx: Tensor | Pairs) -> Tensor:
    """A per-pair result [n] in the caller's form: [B, w] for a padded idx [B, w], [n] for Pairs."""
    return flat if isinstance(idx, Pairs) else flat.view(idx.shape)


def gather_preacts_eager(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor | Pairs) -> Tensor:
    """x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], pre [B, d_sae] (unused), idx [B, w] or Pairs ->
    [B, w] or [n]."""
    del pre
    pairs = _pairs_of(idx)
    return _shaped((x @ W_enc + b_enc)[pairs.tokens, pairs.latents], idx)


def sparse_decode_eager(idx: Tensor | Pairs, vals: Tensor, W_dec: Tensor) -> Tensor:
    """idx [B, w] or Pairs, vals [B, w] or [n], W_dec [d_sae, d_in] -> [B, d_in] (no b_dec)."""
    pairs = _pairs_of(idx)
    terms = vals.reshape(-1, 1) * W_dec[pairs.latents]
    return terms.new_zeros(pairs.n_rows, W_dec.shape[1]).index_add(0, pairs.tokens, terms)


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
    pairs: Pairs, weights: Tensor, rows: Tensor, d_sae: int, by_latent: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """out[i] = sum over pairs p with latent i of weights[p] * rows[token of p].

    weights [n], rows [B, d] -> [d_sae, d]. Latents never selected get zero rows.
    by_latent: `_order_by_latent(pairs.latents, d_sae)` when already computed.
    """
    order, offsets = by_latent or _order_by_latent(pairs.latents, d_sae)
    return F.embedding_bag(
        pairs.tokens[order], rows, offsets, mode="sum", per_sample_weights=weights[order].to(rows.dtype)
    )


def _pair_dots(
    pairs: Pairs, rows: Tensor, table: Tensor, by_latent: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """out[p] = <rows[token of p], table[latent of p]>: rows [B, d], table [d_sae, d] -> [n].

    Computed latent-major (each table row is read once, the small `rows` are gathered), with the kernel
    torch uses for embedding_bag's per-sample-weight gradient: its "bags" are the latents.
    """
    order, offsets = by_latent or _order_by_latent(pairs.latents, table.shape[0])
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        table.contiguous(), rows.contiguous(), pairs.tokens[order], offsets, pairs.latents[order], 0, -1
    )
    return torch.empty_like(dots).index_put_((order,), dots)


def _token_major_sum(pairs: Pairs, weights: Tensor, table: Tensor) -> Tensor:
    """out[b] = sum over token b's pairs p of weights[p] * table[latent of p]: weights [n], table [d_sae, d] ->
    [B, d]."""
    return F.embedding_bag(
        pairs.latents, table, pairs.offsets, mode="sum", per_sample_weights=weights.to(table.dtype)
    )


def _rows_of(W_enc: Tensor) -> Tensor:
    """W_enc [d_in, d_sae] -> W_enc^T [d_sae, d_in] contiguous (a view when W_enc is stored column-major)."""
    return W_enc.t().contiguous()


class _GatherPreacts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, pairs: Pairs) -> Tensor:
        ctx.save_for_backward(x, W_enc)
        ctx.pairs = pairs
        return pre[pairs.tokens, pairs.latents]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, W_enc = ctx.saved_tensors
        pairs, d_sae = ctx.pairs, W_enc.shape[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = _token_major_sum(pairs, grad, _rows_of(W_enc)).to(x.dtype)
        if need_w:
            grad_w = _latent_major_sum(pairs, grad, x.to(W_enc.dtype), d_sae).t()
        if need_b:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, pairs.latents, grad)
        return grad_x, grad_w, grad_b, None, None


class _SelectedPreacts(_GatherPreacts):
    """Like _GatherPreacts, from the selected pre-activations themselves instead of the dense [B, d_sae]."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, vals: Tensor, pairs: Pairs) -> Tensor:
        ctx.save_for_backward(x, W_enc)
        ctx.pairs = pairs
        return vals.clone()


def selected_preacts(x: Tensor, W_enc: Tensor, b_enc: Tensor, vals: Tensor, idx: Tensor | Pairs) -> Tensor:
    """vals [B, w] or [n] = (x @ W_enc + b_enc) at the pairs idx, computed elsewhere (no grad) -> the same
    values, with `gather_preacts`' gradients w.r.t. x [B, d_in], W_enc [d_in, d_sae] and b_enc [d_sae]."""
    flat = _SelectedPreacts.apply(x, W_enc, b_enc, vals.detach().reshape(-1), _pairs_of(idx))
    return _shaped(flat, idx)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals: Tensor, W_dec: Tensor, pairs: Pairs) -> Tensor:
        ctx.save_for_backward(vals, W_dec)
        ctx.pairs = pairs
        return _token_major_sum(pairs, vals, W_dec)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        vals, W_dec = ctx.saved_tensors
        pairs = ctx.pairs
        grad_vals = grad_w = None
        by_latent = _order_by_latent(pairs.latents, W_dec.shape[0])
        if ctx.needs_input_grad[0]:
            grad_vals = _pair_dots(pairs, grad.to(W_dec.dtype), W_dec, by_latent).to(vals.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _latent_major_sum(pairs, vals, grad.to(W_dec.dtype), W_dec.shape[0], by_latent)
        return grad_vals, grad_w, None


def gather_preacts_fast(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor | Pairs) -> Tensor:
    """x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], pre [B, d_sae] (no grad), idx [B, w] int64 or Pairs ->
    [B, w] or [n].

    Returns pre at the pairs (pre.gather(1, idx)); the backward touches only the selected columns of W_enc.
    """
    return _shaped(_GatherPreacts.apply(x, W_enc, b_enc, pre.detach(), _pairs_of(idx)), idx)


def sparse_decode_fast(idx: Tensor | Pairs, vals: Tensor, W_dec: Tensor) -> Tensor:
    """idx [B, w] int64 or Pairs, vals [B, w] or [n], W_dec [d_sae, d_in] -> [B, d_in] = sum over token b's pairs
    of vals * W_dec[latent]."""
    return _SparseDecode.apply(vals.reshape(-1), W_dec, _pairs_of(idx))


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
    # gather and scatter move bits: on a 2-byte dtype they run as int16 (torch's bf16 gather is 5x slower here)
    bits = torch.int16 if pre.element_size() == 2 else pre.dtype
    cand = grouped.view(bits).gather(2, groups.unsqueeze(1).expand(n_rows, s, k)).view(pre.dtype)
    first, first_pos = cand.max(1)
    minus_inf = torch.tensor(float("-inf"), dtype=pre.dtype).view(bits).item()
    second, second_pos = cand.view(bits).scatter(1, first_pos.unsqueeze(1), minus_inf).view(pre.dtype).max(1)
    values, which = torch.cat([first, second], 1).topk(k, dim=1, sorted=False)
    pos = torch.cat([first_pos, second_pos], 1).gather(1, which)
    group = groups.gather(1, which.remainder(k))
    crowded = ((cand >= m_k.unsqueeze(1)).to(torch.int8).sum(1, dtype=torch.int8) > 2).any(1)
    crowded = crowded.nonzero().squeeze(1)
    if len(crowded):
        block = cand[crowded].view(len(crowded), s * k)
        values[crowded], j = block.topk(k, dim=1, sorted=False)
        pos[crowded] = torch.div(j, k, rounding_mode="floor")
        group[crowded] = groups[crowded].gather(1, j.remainder(k))
    return values, group + n_groups * pos


gather_preacts = gather_preacts_fast
sparse_decode = sparse_decode_fast
topk_select = topk_select_fast
