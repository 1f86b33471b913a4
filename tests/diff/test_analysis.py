"""The diff's per-latent numbers against a float64 reference and Latent Scaling against planted artefacts (the
planted diff through the whole run is in test_run.py)."""

from __future__ import annotations

import math

import pytest
import torch

from saeforge.diff.analysis import diff_latents
from saeforge.diff.categories import Thresholds
from saeforge.synthetic import PairedSyntheticActivations, PairedSyntheticConfig, category_recovery
from tests.diff.coders import HandCrossCoder


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def _reference(coder, xb, xf):
    """Naive float64 per latent: relative norm, cosine, freq and the four betas by least squares."""
    W_dec = coder.W_dec.detach().double()
    b_dec = coder.b_dec.detach().double()
    x = torch.stack([xb, xf], 1).double()
    z = coder.encode(x.float()).double()
    x_hat = torch.stack([z @ W_dec[:, m] + b_dec[m] for m in (0, 1)], 1)
    out = []
    for j in range(W_dec.shape[0]):
        nb, nf = W_dec[j, 0].norm().item(), W_dec[j, 1].norm().item()
        rel = nf / (nb + nf)
        own = 1 if rel >= 0.5 else 0
        u = W_dec[j, own]
        a = (z[:, j, None] * u).flatten()  # the regressor beta * z_j u_j, all rows stacked

        def beta(y, a=a):
            return float(a @ y.flatten() / (a @ a)) if a.abs().sum() > 0 else math.nan

        betas = {}
        for m, name in ((0, "base"), (1, "finetuned")):
            betas[f"beta_r_{name}"] = beta(x_hat[:, m] - b_dec[m])
            betas[f"beta_eps_{name}"] = beta(x[:, m] - x_hat[:, m] + z[:, j, None] * W_dec[j, m])
        cos = float(W_dec[j, 0] @ W_dec[j, 1] / (nb * nf)) if nb > 0 and nf > 0 else 0.0
        out.append({"relative_norm": rel, "decoder_cosine": cos, "freq": float((z[:, j] > 0).double().mean()),
                    **betas})  # fmt: skip
    return out


def test_numbers_match_a_float64_reference(one_thread):
    g = torch.Generator().manual_seed(3)
    d_in, d_sae, n = 6, 10, 700
    coder = HandCrossCoder(
        torch.randn(2, d_in, d_sae, generator=g),
        torch.randn(d_sae, 2, d_in, generator=g) * torch.rand(d_sae, 2, 1, generator=g),
        0.1 * torch.randn(2, d_in, generator=g),
        -torch.rand(d_sae, generator=g),
    )
    xb, xf = torch.randn(n, d_in, generator=g), torch.randn(n, d_in, generator=g)
    rows, n_rows = diff_latents(coder, [(xb[:300], xf[:300]), (xb[300:], xf[300:])])
    assert n_rows == n
    for got, want in zip(rows, _reference(coder, xb, xf), strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (got["latent"], key)


def test_max_rows_stops_the_pass(one_thread):
    g = torch.Generator().manual_seed(4)
    coder = HandCrossCoder(torch.randn(2, 4, 5, generator=g), torch.randn(5, 2, 4, generator=g),
                           torch.zeros(2, 4), torch.zeros(5))  # fmt: skip
    xb, xf = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)
    rows, n_rows = diff_latents(coder, [(xb, xf)], max_rows=37)
    assert n_rows == 37
    assert rows[0]["freq"] == pytest.approx(_reference(coder, xb[:37], xf[:37])[0]["freq"])


def _planted_artefacts(n: int = 4000):
    """Unit directions e0..e5 of R^8 and a crosscoder that reads them exactly:

    latent 0: concept e0 in both models (base at 0.6x), decoder only in the fine-tuned model -> complete shrinkage
    latent 1: concept e1 only in the fine-tuned model, decoder only there           -> genuinely fine-tuned only
    latents 2, 3: concept e2 in both, split into a fine-tuned-only and a base-only latent -> latent decoupling
    latent 4: e3 in both, shared; latent 5: e4 in the base model, e5 in the fine-tuned one -> changed
    """
    g = torch.Generator().manual_seed(5)
    e = torch.eye(8)
    codes = (torch.rand(n, 5, generator=g) < 0.3) * (0.5 + torch.rand(n, 5, generator=g))
    xb = 0.6 * codes[:, :1] * e[0] + codes[:, 2:3] * e[2] + codes[:, 3:4] * e[3] + codes[:, 4:5] * e[4]
    xf = codes[:, :1] * e[0] + codes[:, 1:2] * e[1] + codes[:, 2:3] * e[2] + codes[:, 3:4] * e[3]
    xf = xf + codes[:, 4:5] * e[5]
    W_enc = torch.zeros(2, 8, 6)
    W_dec = torch.zeros(6, 2, 8)
    reads = [(1, 0), (1, 1), (1, 2), (0, 2), (1, 3), (1, 5)]  # (site, direction) each latent's encoder reads
    writes = [[None, 0], [None, 1], [None, 2], [2, None], [3, 3], [4, 5]]
    for j, (site, d) in enumerate(reads):
        W_enc[site, d, j] = 1.0
        for m, w in enumerate(writes[j]):
            if w is not None:
                W_dec[j, m, w] = 1.0
    return HandCrossCoder(W_enc, W_dec, torch.zeros(2, 8), torch.zeros(6)), xb, xf


def test_latent_scaling_flags_planted_artefacts():
    coder, xb, xf = _planted_artefacts()
    rows, _ = diff_latents(coder, [(xb, xf)])
    shrunk, genuine, split_ft, split_base, shared, changed = rows
    assert shrunk["relative_norm"] == 1.0 and shrunk["nu_eps"] == pytest.approx(0.6, abs=1e-6)
    assert (shrunk["category"], shrunk["artefacts"]) == ("shared", ["complete_shrinkage"])
    assert genuine["category"] == "finetuned_only" and genuine["artefacts"] == []
    assert genuine["nu_eps"] == pytest.approx(0.0, abs=1e-6) and genuine[
        "beta_eps_finetuned"
    ] == pytest.approx(1.0)
    for latent in (split_ft, split_base):
        assert latent["nu_r"] == pytest.approx(1.0, abs=1e-6)
        assert (latent["category"], latent["artefacts"]) == ("shared", ["latent_decoupling"])
    assert shared["category"] == "shared" and shared["decoder_cosine"] == pytest.approx(1.0)
    assert changed["category"] == "changed" and changed["decoder_cosine"] == pytest.approx(0.0)
    # The presence-based frequencies: e1 never reaches the base model, e3 reaches both.
    assert genuine["freq_base"] == 0.0 and genuine["freq_finetuned"] == pytest.approx(genuine["freq"])
    assert shared["freq_base"] == pytest.approx(shared["freq"]) == pytest.approx(shared["freq_finetuned"])
    # Without Latent Scaling (thresholds no ratio can reach) the artefacts would pass as model-specific.
    loose, _ = diff_latents(coder, [(xb, xf)], Thresholds(max_nu_eps=1e9, max_nu_r=1e9))
    assert [r["category"] for r in loose[:4]] == [
        "finetuned_only",
        "finetuned_only",
        "finetuned_only",
        "base_only",
    ]


def test_recovery_fails_for_a_random_dictionary():
    """The score can fail: a random decoder with random categories recovers nothing."""
    data = PairedSyntheticActivations(PairedSyntheticConfig(d_in=32, seed=0))
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randn(64, 2, 32, generator=g)
    kinds = ["shared", "base_only", "finetuned_only", "changed"]
    predicted = [kinds[i] for i in torch.randint(0, 4, (64,), generator=g).tolist()]
    scores = category_recovery(W_dec, predicted, data.features, data.kinds)
    assert all(s["recall"] < 0.5 for s in scores.values())
