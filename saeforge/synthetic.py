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


PAIRED_KINDS = ("shared", "base_only", "finetuned_only", "changed")


@dataclass(frozen=True)
class PairedSyntheticConfig:
    """Two models' activations on the same tokens, built from one set of planted codes.

    Feature i fires on the same tokens in both models (the codes of `SyntheticActivations`), and writes
    direction a_i into the base model and b_i into the fine-tuned one: shared (b_i = a_i), base_only (b_i = 0),
    finetuned_only (a_i = 0) or changed (b_i an independent unit direction: the fine-tune rotated it).
    """

    d_in: int = 32
    n_shared: int = 24
    n_base_only: int = 8
    n_finetuned_only: int = 8
    n_changed: int = 8
    l0: float = 4.0
    zipf_exponent: float = 0.5
    zipf_offset: float = 10.0
    magnitude_std: float = 0.25
    noise_std: float = 0.01
    seed: int = 0

    @property
    def n_features(self) -> int:
        return self.n_shared + self.n_base_only + self.n_finetuned_only + self.n_changed


class PairedSyntheticActivations:
    """`features` [n_features, 2, d_in] (row i: a_i, b_i; zero rows where a model lacks the feature) and
    `kinds` [n_features] (one of PAIRED_KINDS). Kinds are spread over the firing-frequency ranks at random."""

    def __init__(self, cfg: PairedSyntheticConfig):
        self.cfg = cfg
        self._codes = SyntheticActivations(
            SyntheticConfig(
                d_in=cfg.d_in,
                n_features=cfg.n_features,
                l0=cfg.l0,
                zipf_exponent=cfg.zipf_exponent,
                zipf_offset=cfg.zipf_offset,
                magnitude_std=cfg.magnitude_std,
                noise_std=cfg.noise_std,
                seed=cfg.seed,
            )
        )
        g = torch.Generator().manual_seed(_SEED_SALT + 2 * cfg.seed + 7)
        counts = (cfg.n_shared, cfg.n_base_only, cfg.n_finetuned_only, cfg.n_changed)
        kinds = [k for k, n in zip(PAIRED_KINDS, counts, strict=True) for _ in range(n)]
        self.kinds = [kinds[i] for i in torch.randperm(len(kinds), generator=g).tolist()]
        a = self._codes.features
        rotated = torch.randn(cfg.n_features, cfg.d_in, generator=g)
        rotated = rotated / rotated.norm(dim=1, keepdim=True)
        b = a.clone()
        for i, kind in enumerate(self.kinds):
            if kind == "base_only":
                b[i] = 0
            elif kind == "finetuned_only":
                a[i] = 0
            elif kind == "changed":
                b[i] = rotated[i]
        self.features = torch.stack([a, b], dim=1)
        self._generator = torch.Generator().manual_seed(_SEED_SALT + 2 * cfg.seed + 9)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """(x_base [n, d_in], x_finetuned [n, d_in]) on the same n tokens."""
        codes = self._codes.sample_codes(n)
        g, d = self._generator, self.cfg.d_in
        x_base = codes @ self.features[:, 0] + self.cfg.noise_std * torch.randn(n, d, generator=g)
        x_ft = codes @ self.features[:, 1] + self.cfg.noise_std * torch.randn(n, d, generator=g)
        return x_base, x_ft


def category_recovery(
    W_dec: Tensor, predicted: list[str], features: Tensor, kinds: list[str], min_cosine: float = 0.9
) -> dict[str, dict[str, float]]:
    """Precision and recall per planted kind of a dictionary's latent categories.

    W_dec [d_sae, ..., d_in] and features [n_features, ..., d_in] are compared flattened (both sites at once).
    A latent matches the planted feature of highest cosine if that cosine is >= min_cosine. precision(c): of
    the latents predicted c, the share matching a feature of kind c; recall(c): of the features of kind c, the
    share matched by some latent predicted c.
    """
    dec = W_dec.detach().double().flatten(1)
    true = features.double().flatten(1)
    cos = (dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (true / true.norm(dim=1, keepdim=True)).T
    best, match = cos.max(dim=1)
    out = {}
    for kind in sorted(set(kinds)):
        pred = [j for j, p in enumerate(predicted) if p == kind]
        hit = [j for j in pred if best[j] >= min_cosine and kinds[int(match[j])] == kind]
        found = {int(match[j]) for j in hit}
        n_true = sum(k == kind for k in kinds)
        out[kind] = {
            "precision": len(hit) / len(pred) if pred else 0.0,
            "recall": len(found) / n_true if n_true else 0.0,
            "n_predicted": float(len(pred)),
            "n_planted": float(n_true),
        }
    return out
