"""Transcoders (sae/transcoder.py): export folding both scales and the skip, the SAELens layout, SAELens loading."""

from __future__ import annotations

import pytest
import torch

from saeforge.sae import SkipTranscoder, TrainStepInput, Transcoder, create_training_sae, load_sae, save_sae

D_IN, D_OUT, M = 8, 12, 40
KINDS = [("standard", False, "transcoder"), ("standard", True, "skip_transcoder"),
         ("jumprelu", False, "jumprelu_transcoder"), ("batchtopk", True, "jumprelu_skip_transcoder"),
         ("topk", False, "topk_transcoder"), ("topk", True, "topk_skip_transcoder")]  # fmt: skip


def _trained_like(arch: str, skip: bool):
    sae = create_training_sae(dict(architecture=arch, kind="transcoder", d_in=D_IN, d_out=D_OUT, d_sae=M, k=4,
                                   skip_connection=skip))  # fmt: skip
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.05)
    return sae.eval()


@pytest.mark.parametrize(("arch", "skip", "exported"), KINDS)
def test_export_folds_input_and_target_scales_and_the_input_bias(arch, skip, exported, tmp_path):
    sae = _trained_like(arch, skip)
    tc = sae.export(2.0, target_scale=0.25)
    assert isinstance(tc, Transcoder) and tc.cfg.architecture == exported
    assert isinstance(tc, SkipTranscoder) == skip and not tc.cfg.apply_b_dec_to_input
    x = torch.randn(32, D_IN)
    xs = 2.0 * x
    y_train = sae.decode(sae.encode(xs)) + (xs @ sae.W_skip.T if skip else 0)
    torch.testing.assert_close(tc(x), y_train / 0.25, atol=1e-4, rtol=1e-4)
    save_sae(
        tc, tmp_path / "tc", metadata={"hook_name": "layers.0.mlp_in", "hook_name_out": "layers.0.mlp_out"}
    )
    back = load_sae(tmp_path / "tc")
    assert type(back) is type(tc) and back.cfg.d_out == D_OUT
    assert torch.equal(back(x), tc(x))


def test_skip_gradient_reaches_w_skip_and_the_step_reconstructs_the_target():
    sae = _trained_like("topk", True).train()
    x, y = torch.randn(16, D_IN), torch.randn(16, D_OUT)
    out = sae.training_forward(TrainStepInput(x=x, target=y))
    out.loss.backward()
    assert sae.W_skip.grad is not None and sae.W_skip.grad.abs().sum() > 0
    assert out.x_hat.shape == (16, D_OUT)
    torch.testing.assert_close(out.losses["mse"], (out.x_hat - y).pow(2).sum(-1).mean())


def test_bad_transcoder_configs_name_the_fix():
    with pytest.raises(ValueError, match="needs d_out"):
        create_training_sae(dict(architecture="topk", kind="transcoder", d_in=4, d_sae=8, k=2))
    with pytest.raises(ValueError, match="'gated' has no transcoder form"):
        create_training_sae(dict(architecture="gated", kind="transcoder", d_in=4, d_out=4, d_sae=8))
    with pytest.raises(ValueError, match="skip_connection only applies to kind 'transcoder'"):
        create_training_sae(dict(architecture="topk", d_in=4, d_sae=8, k=2, skip_connection=True))


@pytest.mark.parametrize(("arch", "skip", "exported"), [k for k in KINDS if not k[2].startswith("topk")])
def test_saelens_loads_saeforge_transcoders_and_computes_the_same_output(arch, skip, exported, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    tc = _trained_like(arch, skip).export(1.5, target_scale=0.5)
    save_sae(tc, tmp_path / "tc", metadata={"hook_name": "blocks.0.ln2.hook_normalized",
                                            "hook_name_out": "blocks.0.hook_mlp_out"})  # fmt: skip
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    assert theirs.cfg.architecture() == exported
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), tc.encode(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(theirs(x), tc(x), rtol=1e-5, atol=1e-5)
