"""Reconstruction and sparsity metrics against float64 numpy computations and planted answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saeforge.eval import StreamAccumulator, evaluate
from saeforge.eval.stream import dead_density_floor, tokens_needed_for_dead


def numpy_reference(sae, batches):
    """Every stream metric computed naively in float64 numpy from the SAE's weights."""
    W_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    xs, x_hats, zs, legacy = [], [], [], []
    for b in batches:
        x = b.double().numpy()
        pre = (x - b_dec if sae.cfg.apply_b_dec_to_input else x) @ W_enc + b_enc
        z = np.maximum(pre, 0)
        x_hat = z @ W_dec + b_dec
        centred = ((x - x.mean(0)) ** 2).sum(1)
        legacy.extend(1 - ((x - x_hat) ** 2).sum(1) / centred)
        xs.append(x)
        x_hats.append(x_hat)
        zs.append(z)
    x, x_hat, z = np.concatenate(xs), np.concatenate(x_hats), np.concatenate(zs)
    err = ((x - x_hat) ** 2).sum(1)
    total = ((x - x.mean(0)) ** 2).sum(1).mean()
    nx, nxh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    l0 = (z > 0).sum(1)
    density = (z > 0).mean(0)
    return {
        "fvu": err.mean() / total,
        "explained_variance": 1 - err.mean() / total,
        "explained_variance_legacy": np.mean(legacy),
        "mse": ((x - x_hat) ** 2).mean(),
        "normalized_l2": (np.sqrt(err) / nx).mean(),
        "cosine": ((x * x_hat).sum(1) / (nx * nxh)).mean(),
        "l2_ratio": (nxh / nx).mean(),
        "shrinkage": (nxh**2).mean() / (x * x_hat).sum(1).mean(),
        "l1": np.abs(z).sum(1).mean(),
        "l0": l0.mean(),
        "l0_std": l0.std(),
        **{f"l0_p{round(q * 100)}": np.quantile(l0, q, method="inverted_cdf") for q in (0.1, 0.5, 0.9, 0.99)},
        "l0_max": l0.max(),
        "dead_fraction": (density == 0).mean(),
        "dense_fraction_10": (density > 0.1).mean(),
        "dense_fraction_30": (density > 0.3).mean(),
        "_density": density,
    }


@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_metrics_match_float64_numpy(saes, acts, apply_b_dec):
    sae = saes.random(16, 48, seed=1, apply_b_dec_to_input=apply_b_dec)
    x = acts(700, 16)
    batches = [x[:256], x[256:300], x[300:]]
    acc = StreamAccumulator(sae)
    for b in batches:
        acc.update(b)
    got = acc.result()
    ref = numpy_reference(sae, batches)
    assert got["tokens"] == 700
    for key, want in ref.items():
        if key.startswith("_"):
            continue
        assert got[key] == pytest.approx(float(want), rel=1e-5, abs=1e-7), key
    np.testing.assert_allclose(acc.density(), ref["_density"], rtol=0, atol=1e-12)
    assert 0 < got["fvu"] < 1.5 and got["l0"] > 1  # a non-trivial case


def test_fvu_does_not_depend_on_batching(saes, acts):
    sae = saes.random(16, 32, seed=2)
    x = acts(512, 16, seed=3)
    one, many = StreamAccumulator(sae), StreamAccumulator(sae)
    one.update(x)
    for b in x.split(37):
        many.update(b)
    a, b = one.result(), many.result()
    for key in ("fvu", "cosine", "l2_ratio", "shrinkage", "l0", "dead_fraction", "normalized_l2"):
        assert a[key] == pytest.approx(b[key], rel=1e-10), key


def test_exact_reconstruction_gives_fvu_zero(saes, acts):
    m = evaluate(saes.identity(16), acts(300, 16).split(100))
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert m["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert m["shrinkage"] == pytest.approx(1.0, abs=1e-9)
    assert m["l2_ratio"] == pytest.approx(1.0, abs=1e-9)
    # each coordinate is non-zero, so exactly one of its two latents fires: l0 = d_in on every token
    assert m["l0"] == 16 and m["l0_std"] == 0


def test_zero_reconstruction(saes, acts):
    x = acts(400, 8)
    m = evaluate(saes.zero(8, 24), [x])
    x64 = x.double()
    want = x64.pow(2).sum(1).mean() / (x64 - x64.mean(0)).pow(2).sum(1).mean()
    assert m["fvu"] == pytest.approx(float(want), rel=1e-12)  # > 1: worse than predicting the mean
    assert m["dead_fraction"] == 1.0 and m["l0"] == 0
    assert m["cosine"] == 0.0 and m["shrinkage"] is None
    assert m["verdict"] == "dead"


def test_planted_dead_and_dense_latents(saes, acts):
    d_in, d_sae = 8, 40
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(d_in, d_sae, generator=g) * 0.3
    b_enc = torch.zeros(d_sae)
    b_enc[:10] = -1e6  # never fire
    b_enc[10:13] = 1e6  # always fire: dense
    sae = saes.make(W_enc, b_enc, torch.randn(d_sae, d_in, generator=g), torch.zeros(d_in))
    m = evaluate(sae, [acts(500, d_in)])
    assert m["dead_count"] == 10 and m["dead_fraction"] == pytest.approx(10 / 40)
    assert m["dense_fraction_30"] >= 3 / 40 and m["dense_fraction_10"] >= m["dense_fraction_30"]
    assert (m["latent_density"][:10] == 0).all() and (m["latent_density"][10:13] == 1).all()


def test_dead_rule_is_calibrated_to_tokens():
    assert tokens_needed_for_dead(1e-4, 0.99) == math.ceil(math.log(100) / 1e-4)
    # a latent at the floor density fires at least once in N tokens with probability 0.99
    n = 10_000
    p = dead_density_floor(n, 0.99)
    assert 1 - (1 - p) ** n == pytest.approx(0.99, abs=1e-3)


def test_dead_reliability_flag(saes, acts):
    sae = saes.random(4, 8)
    assert evaluate(sae, [acts(200, 4)])["dead_reliable"] is False
    big = acts(tokens_needed_for_dead(), 4)
    assert evaluate(sae, big.split(16384))["dead_reliable"] is True


def test_wrong_width_is_refused(saes, acts):
    acc = StreamAccumulator(saes.random(8, 16))
    with pytest.raises(ValueError, match=r"\[batch, 8\]"):
        acc.update(acts(10, 9))
    with pytest.raises(ValueError, match="empty"):
        acc.result()


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_every_inference_architecture(architecture, acts):
    from saeforge.sae import INFERENCE_ARCHITECTURES, SAEConfig

    cfg = SAEConfig(architecture=architecture, d_in=16, d_sae=48, k=5 if architecture == "topk" else None)
    sae = INFERENCE_ARCHITECTURES[architecture](cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(
                torch.rand(p.shape, generator=g) * 0.2
                if name == "threshold"
                else torch.randn(p.shape, generator=g)
            )
    x = acts(300, 16)
    m = evaluate(sae, x.split(128))
    with torch.no_grad():
        z = sae.encode(x).double()
        x_hat = sae.decode(sae.encode(x)).double()
    x64 = x.double()
    want_fvu = (x64 - x_hat).pow(2).sum(1).mean() / (x64 - x64.mean(0)).pow(2).sum(1).mean()
    assert m["fvu"] == pytest.approx(float(want_fvu), rel=1e-5)
    assert m["l0"] == pytest.approx(float((z != 0).sum(1).double().mean()))
    if architecture == "topk":
        assert m["l0_max"] <= 5
