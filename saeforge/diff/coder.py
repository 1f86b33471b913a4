"""What the diff reads from a crosscoder over two sites (site 0 = base model, site 1 = fine-tuned model).

Any object with these tensors and methods works (`saeforge.sae.CrossCoder` is one):

    W_enc [2, d_in, d_sae], W_dec [d_sae, 2, d_in], b_dec [2, d_in]
    encode(x [..., 2, d_in]) -> z [..., d_sae]        decode(z [..., d_sae]) -> x_hat [..., 2, d_in]

`decode` includes `b_dec`, so that x_hat[..., m, :] = sum_j z_j W_dec[j, m] + b_dec[m].
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

BASE, FINETUNED = 0, 1
SITE_NAMES = ("base", "finetuned")


class PairCoder(Protocol):
    W_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


def check_pair_coder(coder: PairCoder, d_in: int | None = None) -> tuple[int, int]:
    """(d_in, d_sae) of a two-site crosscoder; raises ValueError naming the problem otherwise."""
    W_dec = coder.W_dec
    if W_dec.ndim != 3 or W_dec.shape[1] != 2:
        raise ValueError(
            f"the crosscoder's W_dec is {list(W_dec.shape)}; a model diff needs [d_sae, 2, d_in] (two sites: "
            "the base model's store first, the fine-tuned model's second)"
        )
    d_sae, _, width = W_dec.shape
    if d_in is not None and width != d_in:
        raise ValueError(
            f"the crosscoder reads d_in={width} but the activation stores have d_in={d_in}: use the stores it "
            "was trained on"
        )
    return int(width), int(d_sae)


def latent_directions(coder: PairCoder, relative_norm: Tensor) -> tuple[Tensor, Tensor]:
    """(own [d_sae] long, U [d_sae, d_in]): each latent's own model (1 where relative_norm >= 0.5, else 0) and
    its decoder vector there, u_j = W_dec[j, own_j]."""
    own = (relative_norm >= 0.5).long().to(coder.W_dec.device)
    W_dec = coder.W_dec.detach()
    return own.cpu(), W_dec[torch.arange(W_dec.shape[0], device=W_dec.device), own]


def presence(coder: PairCoder, x: Tensor, site: int, U: Tensor) -> Tensor:
    """How much of each latent's direction model `site`'s activation holds, in units of latent activation:
    <x[:, site] - b_dec[site], u_j> / ||u_j||^2, [B, d_sae] (x [B, 2, d_in], U [d_sae, d_in])."""
    return ((x[:, site] - coder.b_dec[site].detach()) @ U.T) / U.pow(2).sum(1).clamp_min(1e-30)


def as_pair(x_base: Tensor, x_finetuned: Tensor, like: Tensor) -> Tensor:
    """Aligned rows [B, d_in] of each model -> [B, 2, d_in] on `like`'s device and dtype."""
    return torch.stack([x_base, x_finetuned], dim=1).to(device=like.device, dtype=like.dtype)
