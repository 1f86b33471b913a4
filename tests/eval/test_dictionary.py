"""Duplication, the absorption proxy and stability against brute-force float64 computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saeforge.eval import decoder_neighbours, duplication_metrics, evaluate, stability
from saeforge.eval.dictionary import absorption_proxy, max_cosine


def unit(W: torch.Tensor) -> np.ndarray:
    W = W.double().numpy()
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def test_chunked_neighbours_equal_dense():
    W = torch.randn(300, 12, generator=torch.Generator().manual_seed(0))
    best, idx = decoder_neighbours(W, chunk=64)
    sims = unit(W) @ unit(W).T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(best.numpy(), sims.max(1), atol=1e-6)
    assert (idx.numpy() == sims.argmax(1)).all()


def test_planted_duplicates():
    g = torch.Generator().manual_seed(1)
    W = torch.linalg.qr(torch.randn(64, 64, generator=g))[0][:40]  # 40 orthonormal rows
    W[30:40] = W[:10] * 3.0 + 0.01 * torch.randn(10, 64, generator=g)  # 10 near copies of the first 10
    best, _ = decoder_neighbours(W, chunk=7)
    m = duplication_metrics(best)
    assert m["duplication"] == pytest.approx(20 / 40)  # both members of each pair have a twin
    sims = unit(W) @ unit(W).T
    np.fill_diagonal(sims, -np.inf)
    assert m["mean_max_decoder_cosine"] == pytest.approx(sims.max(1).mean(), abs=1e-6)


def test_stability_on_permuted_copies():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(50, 16, generator=g)
    perm = torch.randperm(50, generator=g)
    s = stability(W, W[perm] * 2.0)
    assert s["stability_match_fraction"] == 1.0
    assert s["stability_hungarian_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_stability_against_brute_force():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(40, 8, generator=g)
    B = A[torch.randperm(40, generator=g)] + 0.6 * torch.randn(40, 8, generator=g)
    s = stability(A, B)
    sims = unit(A) @ unit(B).T
    assert s["stability_match_fraction"] == pytest.approx((sims.max(1) > 0.7).mean())
    r, c = linear_sum_assignment(-sims)
    assert s["stability_hungarian_cosine"] == pytest.approx(sims[r, c].mean(), abs=1e-6)
    assert 0 < s["stability_match_fraction"] < 1  # the noise makes this non-trivial
    assert stability(A, B, hungarian_max_latents=10)["stability_hungarian_cosine"] is None


def test_max_cosine_rectangular():
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(13, 5, generator=g), torch.randn(29, 5, generator=g)
    best, idx = max_cosine(A, B, chunk=4)
    sims = unit(A) @ unit(B).T
    np.testing.assert_allclose(best.numpy(), sims.max(1), atol=1e-6)
    assert (idx.numpy() == sims.argmax(1)).all()


def test_absorption_proxy_counts_exclusive_related_pairs():
    # latents 0,1: cosine 0.6, never together -> both count; 2,3: cosine 0.6 but always together -> not;
    # 4,5: duplicates (cosine > 0.9) -> not; 6: dead.
    max_cos = np.array([0.6, 0.6, 0.6, 0.6, 0.95, 0.95, 0.6])
    neighbour = np.array([1, 0, 3, 2, 5, 4, 0])
    fires = np.array([100, 50, 80, 80, 10, 10, 0])
    cofires = np.array([0, 0, 80, 80, 10, 10, 0])
    assert absorption_proxy(max_cos, neighbour, fires, cofires) == pytest.approx(2 / 6)
    assert absorption_proxy(max_cos, neighbour, np.zeros(7, int), np.zeros(7, int)) is None


def test_absorption_proxy_from_streamed_cofiring(saes):
    # parent direction e0; child direction (e0 + e1)/sqrt2 (cosine 0.71). The child fires on tokens along e1,
    # the parent on the others, never both: a planted absorption pattern.
    d_in = 4
    e = torch.eye(d_in)
    W_dec = torch.stack([e[0], (e[0] + e[1]) / 2**0.5, e[2], e[3]])
    W_enc = torch.stack([e[0] - 10 * e[1], e[1], e[2], e[3]], 1)
    sae = saes.make(W_enc, torch.zeros(4), W_dec, torch.zeros(d_in))
    x = torch.zeros(200, d_in)
    x[:100, 0] = 1.0
    x[100:, 1] = 1.0
    x[:, 2] = 1.0
    x[::2, 3] = 1.0
    m = evaluate(sae, [x])
    assert m["absorption_proxy"] == pytest.approx(2 / 4)
