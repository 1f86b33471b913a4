"""A crosscoder built by hand from planted directions, for the diff tests."""

from __future__ import annotations

import torch
from torch import Tensor


class HandCrossCoder(torch.nn.Module):
    """z = ReLU(pre) * [pre > threshold], pre = sum_s (x_s - b_dec_s) W_enc[s] + b_enc; x_hat = z W_dec + b_dec."""

    def __init__(self, W_enc: Tensor, W_dec: Tensor, b_dec: Tensor, b_enc: Tensor, threshold: float = 0.0):
        super().__init__()
        self.W_enc = torch.nn.Parameter(W_enc.float())  # [2, d_in, d_sae]
        self.W_dec = torch.nn.Parameter(W_dec.float())  # [d_sae, 2, d_in]
        self.b_dec = torch.nn.Parameter(b_dec.float())  # [2, d_in]
        self.b_enc = torch.nn.Parameter(b_enc.float())  # [d_sae]
        self.threshold = threshold

    def encode(self, x: Tensor) -> Tensor:
        pre = torch.einsum("...sd,sdk->...k", x - self.b_dec, self.W_enc) + self.b_enc
        return pre.relu() * (pre > self.threshold)

    def decode(self, z: Tensor) -> Tensor:
        return torch.einsum("...k,ksd->...sd", z, self.W_dec) + self.b_dec
