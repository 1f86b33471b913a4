"""Synthetic activations with planted ground-truth features, for testing that SAEs recover them.

Each token is a sparse, non-negative combination of `n_features` unit-norm random directions in d_in dimensions
(n_features > d_in: the features are in superposition), plus isotropic Gaussian noise:

    x = sum_i fires_i * magnitude_i * feature_i + noise

Feature i fires independently with probability p_i following a Zipf-like law, p_i proportional to
(i + zipf_offset) ** -zipf_exponent, scaled so that `l0` features fire per token on average. Magnitudes are
|1 + magnitude_std * N(0, 1)|. Everything is deterministic given `seed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SyntheticConfig:
    d_in: int = 32
    n_features: int = 64
    l0: float = 4.0
    zipf_exponent: float = 0.5
    zipf_offset: float = 10.0
    magnitude_std: float = 0.25
    noise_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.n_features <= 0:
            raise ValueError(f"d_in and n_features must be positive, got {self.d_in}, {self.n_features}")
        if not 0 < self.l0 <= self.n_features:
            raise ValueError(f"l0={self.l0} must be in (0, n_features={self.n_features}]")


# Salts the seed so that the ground truth never shares a random stream with an SAE initialised from the same
# small integer seed (torch.randn(n, d) under manual_seed(0) would otherwise hand the SAE the answer).
_SEED_SALT = 0x5EED_F00D_0000


class SyntheticActivations:
    """Ground truth and sampler. `features` [n_features, d_in] (unit rows), `firing_prob` [n_features]."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(_SEED_SALT + 2 * cfg.seed)
        features = torch.randn(cfg.n_features, cfg.d_in, generator=g)
        self.features = features / features.norm(dim=1, keepdim=True)
        rank = torch.arange(cfg.n_features, dtype=torch.float64)
        weight = (rank + cfg.zipf_offset) ** -cfg.zipf_exponent
        self.firing_prob = (weight * cfg.l0 / weight.sum()).clamp(max=1.0).float()
        self._generator = torch.Generator().manual_seed(_SEED_SALT + 2 * cfg.seed + 1)

    def sample_codes(self, n: int) -> Tensor:
        """[n, n_features] non-negative true codes (zero where a feature does not fire)."""
        g = self._generator
        fires = torch.rand(n, self.cfg.n_features, generator=g) < self.firing_prob
        magnitude = (1.0 + self.cfg.magnitude_std * torch.randn(n, self.cfg.n_features, generator=g)).abs()
        return fires * magnitude

    def sample(self, n: int) -> Tensor:
        """[n, d_in] activations."""
        codes = self.sample_codes(n)
        noise = self.cfg.noise_std * torch.randn(n, self.cfg.d_in, generator=self._generator)
        return codes @ self.features + noise

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Endless iterator of [batch_size, d_in] batches."""
        while True:
            yield self.sample(batch_size)


def feature_recovery(W_dec: Tensor, true_features: Tensor) -> float:
    """Mean over true features [n_features, d_in] of the best cosine similarity with a row of W_dec [d_sae, d_in]."""
    if W_dec.shape[-1] != true_features.shape[-1]:
        raise ValueError(f"W_dec has width {W_dec.shape[-1]} but true_features {true_features.shape[-1]}")
    dec = W_dec.detach().double()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    true = true_features.double()
    true = true / true.norm(dim=1, keepdim=True)
    return float((true @ dec.T).max(dim=1).values.mean())
