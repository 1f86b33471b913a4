"""Crosscoders (sae/crosscoder.py): the contract's shapes, export folding per-site scales, the L1 weight, files."""

from __future__ import annotations

import pytest
import torch

import saeforge
from saeforge.sae import CrossCoder, TrainStepInput, create_training_sae, save_sae
from saeforge.sae.crosscoder import JumpReLUCrossCoder

N, D, M = 3, 8, 40


def _trained_like(arch: str, **kw):
    sae = create_training_sae(
        dict(architecture=arch, kind="crosscoder", n_sites=N, d_in=D, d_sae=M, k=4, **kw)
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05)
    return sae


@pytest.mark.parametrize(("arch", "exported"), [("batchtopk", "jumprelu_crosscoder"), ("standard", "crosscoder"),
                                                 ("topk", "topk_crosscoder"), ("jumprelu", "jumprelu_crosscoder")])  # fmt: skip
def test_export_folds_per_site_scales_into_the_papers_shapes(arch, exported):
    sae = _trained_like(arch, sites=["a", "b", "c"])
    scales = torch.tensor([2.0, 0.5, 3.0])
    cc = sae.export(scales.repeat_interleave(D))
    assert isinstance(cc, CrossCoder) and cc.cfg.architecture == exported and cc.cfg.sites == ["a", "b", "c"]
    shapes = {k: tuple(v.shape) for k, v in cc.state_dict().items()}
    assert shapes["W_enc"] == (N, D, M) and shapes["W_dec"] == (M, N, D)
    assert shapes["b_enc"] == (M,) and shapes["b_dec"] == (N, D)
    assert ("threshold" in shapes) == exported.startswith("jumprelu")
    x = torch.randn(64, N, D)
    sae.eval()
    z_train = sae.encode((x * scales[:, None]).reshape(64, N * D))
    z = cc.encode(x)
    torch.testing.assert_close(z, z_train, atol=1e-5, rtol=1e-4)
    # decode writes every site in raw units: the training decode divided by each site's scale
    want = sae.decode(z_train).view(64, N, D) / scales[:, None]
    torch.testing.assert_close(cc.decode(z), want, atol=1e-5, rtol=1e-4)
    # the encoder is the sum of per-site projections, as the paper writes it (naive float64 loop)
    W, b = cc.W_enc.double(), cc.b_enc.double()
    pre = sum(x[:, s].double() @ W[s] for s in range(N)) + b
    torch.testing.assert_close(cc.pre_acts(x).double(), pre, atol=1e-5, rtol=1e-5)


def test_l1_weights_each_latent_by_the_sum_of_its_per_site_decoder_norms():
    sae = _trained_like("standard", sparsity_coefficient=0.7)
    x = torch.randn(32, N * D)
    out = sae.training_forward(TrainStepInput(x=x))
    z = sae.encode(x).double()
    W = sae.W_dec.detach().double().view(M, N, D)
    naive = sum(z[:, i] * sum(W[i, s].norm() for s in range(N)) for i in range(M)).mean()
    torch.testing.assert_close(out.losses["l1"].double(), 0.7 * naive, atol=1e-6, rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    cc = _trained_like("batchtopk", sites=["base:layers.1.resid_post", "chat:layers.1.resid_post", "x"])
    cc = cc.export(1.5)
    save_sae(cc, tmp_path / "cc", metadata={"model_name": "tiny"})
    back = saeforge.load_sae(tmp_path / "cc")
    assert isinstance(back, JumpReLUCrossCoder) and isinstance(back, CrossCoder)
    assert (back.cfg.n_sites, back.cfg.d_in, back.cfg.d_sae, back.cfg.sites) == (N, D, M, cc.cfg.sites)
    for name, value in cc.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = torch.randn(10, N, D)
    assert torch.equal(back(x), cc(x)) and back(x).shape == (10, N, D)
    with pytest.raises(ValueError, match=r"reads \[\.\.\., 3, 8\], got \[10, 8\]"):
        back.encode(torch.randn(10, D))


def test_bad_crosscoder_configs_name_the_fix():
    with pytest.raises(ValueError, match="needs n_sites"):
        create_training_sae(dict(architecture="batchtopk", kind="crosscoder", d_in=4, d_sae=8, k=2))
    with pytest.raises(ValueError, match="'gated' has no crosscoder form; use one of"):
        create_training_sae(dict(architecture="gated", kind="crosscoder", n_sites=2, d_in=4, d_sae=8))
    with pytest.raises(ValueError, match="must name each of the n_sites=2 sites once"):
        create_training_sae(dict(architecture="topk", kind="crosscoder", n_sites=2, sites=["a", "a"], d_in=4,
                                 d_sae=8, k=2))  # fmt: skip
    with pytest.raises(ValueError, match="n_sites only applies to kind 'crosscoder'"):
        create_training_sae(dict(architecture="topk", n_sites=2, d_in=4, d_sae=8, k=2))
    with pytest.raises(ValueError, match="unknown dictionary kind 'crosscoders'"):
        create_training_sae(dict(architecture="topk", kind="crosscoders", n_sites=2, d_in=4, d_sae=8, k=2))
