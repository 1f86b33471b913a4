"""Hot paths of the TopK family, each behind one function with an eager reference beside it.

`topk_encode` returns the k largest pre-activations per token (after ReLU) and their latent indices;
`sparse_decode` turns (indices, values) into a reconstruction without a dense [B, d_sae] matrix.
The `_eager` functions are the references the fast paths are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_encode_eager(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """x [B, d_in] (already centred by b_dec) -> (values [B, k] >= 0, indices [B, k])."""
    pre = x @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return vals.relu(), idx


def sparse_decode_eager(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """(indices [B, k], values [B, k]) -> [B, d_in] = sum_j vals[:, j] * W_dec[idx[:, j]] (no b_dec)."""
    return (vals.unsqueeze(-1) * W_dec[idx]).sum(-2)


topk_encode = topk_encode_eager
sparse_decode = sparse_decode_eager
