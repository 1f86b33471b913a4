"""Hot paths of the TopK family, each behind one function with an eager reference beside it.

The TopK-family pattern (architectures choose *which* latents fire; kernels make that cheap):

    with torch.no_grad():
        pre = x @ W_enc + b_enc                      # [B, d_sae], forward only, no dense gradient
    idx = <architecture's selection>(pre)            # [B, w] latent indices (top-k, batch top-k, AuxK, ...)
    vals = gather_preacts(x, W_enc, b_enc, pre, idx) # [B, w] differentiable; gradients touch only idx columns
    x_hat = sparse_decode(idx, vals.relu(), W_dec) + b_dec

`gather_preacts` returns pre[b, idx[b, j]] with gradients w.r.t. x, W_enc and b_enc that equal those of the
dense expression `(x @ W_enc + b_enc).gather(1, idx)`. `sparse_decode` returns sum_j vals[b, j] W_dec[idx[b, j]].
The `_eager` functions are the references the fast paths are tested against (values and gradients).
"""

from __future__ import annotations

from torch import Tensor


def gather_preacts_eager(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
    """x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae], pre [B, d_sae] (unused), idx [B, w] -> [B, w]."""
    del pre
    return (x @ W_enc + b_enc).gather(1, idx)


def sparse_decode_eager(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """idx [B, w], vals [B, w], W_dec [d_sae, d_in] -> [B, d_in] (no b_dec)."""
    return (vals.unsqueeze(-1) * W_dec[idx]).sum(-2)


gather_preacts = gather_preacts_eager
sparse_decode = sparse_decode_eager
