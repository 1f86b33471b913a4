"""The ground-truth generator, feature_recovery, and b_dec initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saeforge.sae import create_training_sae
from saeforge.sae.training import geometric_median
from saeforge.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery


def test_generator_is_deterministic_and_planted():
    cfg = SyntheticConfig(d_in=16, n_features=40, l0=5, seed=3)
    a, b = SyntheticActivations(cfg), SyntheticActivations(cfg)
    assert torch.equal(a.features, b.features) and torch.equal(a.sample(64), b.sample(64))
    assert not torch.equal(
        a.features, SyntheticActivations(SyntheticConfig(d_in=16, n_features=40, seed=4)).features
    )
    torch.testing.assert_close(a.features.norm(dim=1), torch.ones(40))
    assert (a.firing_prob[:-1] >= a.firing_prob[1:]).all() and a.firing_prob[0] > 1.5 * a.firing_prob[-1]
    codes = a.sample_codes(20000)
    assert (codes >= 0).all()
    assert (codes > 0).sum(1).float().mean().item() == pytest.approx(5, rel=0.05)


def test_samples_are_the_planted_combination_plus_noise():
    data = SyntheticActivations(SyntheticConfig(d_in=8, n_features=12, noise_std=0.0))
    g_state = data._generator.get_state()
    x = data.sample(100)
    data._generator.set_state(g_state)
    torch.testing.assert_close(x, data.sample_codes(100) @ data.features)


def test_feature_recovery():
    data = SyntheticActivations(SyntheticConfig(d_in=8, n_features=12))
    perm = torch.randperm(12)
    W_dec = torch.cat([3.0 * data.features[perm], torch.randn(5, 8)])
    assert feature_recovery(W_dec, data.features) == pytest.approx(1.0)
    half = W_dec.clone()
    half[:12][perm < 6] = torch.randn(6, 8)
    value = feature_recovery(half[:12], data.features)
    assert 0.5 < value < 0.95
    with pytest.raises(ValueError, match="width"):
        feature_recovery(torch.randn(4, 7), data.features)


def test_geometric_median_matches_scipy():
    x = torch.randn(300, 5, dtype=torch.float64) ** 3
    ours = geometric_median(x).numpy()
    xn = x.numpy()
    res = minimize(lambda m: np.linalg.norm(xn - m, axis=1).sum(), xn.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})  # fmt: skip
    np.testing.assert_allclose(ours, res.x, atol=1e-4)
    assert np.linalg.norm(xn - ours, axis=1).sum() <= np.linalg.norm(xn - xn.mean(0), axis=1).sum()


@pytest.mark.parametrize("method", ["geometric_median", "mean", "zeros"])
def test_init_from_data_sets_b_dec(method):
    x = torch.randn(200, 6) + 4.0
    sae = create_training_sae(dict(architecture="topk", d_in=6, d_sae=12, k=2, b_dec_init=method))
    sae.init_from_data(x)
    expected = {"geometric_median": geometric_median(x), "mean": x.mean(0), "zeros": torch.zeros(6)}[method]
    torch.testing.assert_close(sae.b_dec.detach(), expected)
    with pytest.raises(ValueError, match=r"\[N, d_in=6\]"):
        sae.init_from_data(torch.randn(10, 5))
