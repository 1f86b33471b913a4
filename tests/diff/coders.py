"""Crosscoders for the diff tests: one built by hand from planted directions, one trained as a BatchTopK SAE
over the two sites' concatenated activations (the encoder then sums per-site projections, as a crosscoder's)."""

from __future__ import annotations

import torch
from torch import Tensor

from saeforge.sae import TrainStepInput, create_training_sae


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


class ConcatCrossCoder(torch.nn.Module):
    """An inference SAE over [x_base, x_finetuned] (width 2 d_in) seen through the crosscoder's tensor layout."""

    def __init__(self, sae):
        super().__init__()
        self.sae = sae
        self.d_in = sae.cfg.d_in // 2

    @property
    def W_enc(self) -> Tensor:
        return self.sae.W_enc.view(2, self.d_in, -1)

    @property
    def W_dec(self) -> Tensor:
        return self.sae.W_dec.view(-1, 2, self.d_in)

    @property
    def b_dec(self) -> Tensor:
        return self.sae.b_dec.view(2, self.d_in)

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x.flatten(-2))

    def decode(self, z: Tensor) -> Tensor:
        return self.sae.decode(z).unflatten(-1, (2, self.d_in))


def train_concat_crosscoder(
    sample, d_in: int, d_sae: int, k: int, steps: int = 800, batch_size: int = 256, seed: int = 0
) -> ConcatCrossCoder:
    """BatchTopK on concatenated pairs from `sample(n) -> (x_base, x_finetuned)`; AuxK revives dead latents."""
    torch.manual_seed(seed)
    cfg = {"architecture": "batchtopk", "d_in": 2 * d_in, "d_sae": d_sae, "k": k, "aux_coefficient": 0.25}
    sae = create_training_sae(cfg)
    first = torch.cat(sample(4096), dim=1)
    scale = (2 * d_in) ** 0.5 / first.norm(dim=1).mean().item()
    sae.init_from_data(scale * first)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    since_fired = torch.zeros(d_sae)
    for step in range(steps):
        x = scale * torch.cat(sample(batch_size), dim=1)
        out = sae.training_forward(TrainStepInput(x=x, step=step, dead_mask=since_fired >= 2000))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        since_fired = torch.where(out.fired > 0, 0.0, since_fired + batch_size)
    return ConcatCrossCoder(sae.export(scale))
