"""Export (scale and pre-encoder bias folded), SAELens-layout save/load, and loading SAELens-written files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import saeforge
from saeforge.sae import (
    INFERENCE_ARCHITECTURES,
    TRAINING_ARCHITECTURES,
    create_training_sae,
    load_sae,
    save_sae,
)

D_IN, D_SAE = 8, 24


def _trained_like(arch: str):
    """A training SAE with every parameter and buffer moved away from its initial value."""
    sae = create_training_sae(dict(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=4, seed=3))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(sae.threshold.shape, generator=g))
    return sae


@pytest.mark.parametrize("arch", sorted(set(TRAINING_ARCHITECTURES) - {"relu"}))
def test_export_folds_scale_and_bias(arch):
    sae, s = _trained_like(arch), 3.7
    exported = sae.export(s)
    assert exported.cfg.apply_b_dec_to_input is False
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(5))
    z = exported.encode(x)
    torch.testing.assert_close(z, sae.encode(s * x), rtol=1e-5, atol=1e-5)
    assert (z > 0).any()
    torch.testing.assert_close(exported.decode(z), sae.decode(z) / s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exported(x), sae(s * x) / s, rtol=1e-5, atol=1e-5)


def test_batchtopk_exports_as_jumprelu_with_its_threshold():
    sae = _trained_like("batchtopk")
    exported = sae.export(2.0)
    assert exported.cfg.architecture == "jumprelu"
    torch.testing.assert_close(exported.threshold, sae.threshold.expand(D_SAE))
    one = torch.randn(1, D_IN)
    batch = torch.cat([one, torch.randn(31, D_IN)])
    torch.testing.assert_close(exported.encode(one)[0], exported.encode(batch)[0])


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated", "batchtopk"])
def test_save_load_round_trip(arch, tmp_path):
    exported = _trained_like(arch).export(1.5)
    out = save_sae(exported, tmp_path / "sae", metadata={"hook_name": "layers.2.resid_post"})
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == exported.cfg.architecture
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D_IN, D_SAE, "float32")
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["saeforge_hook_name"] == "layers.2.resid_post"
    assert ("k" in cfg) == (arch == "topk")
    loaded = saeforge.load_sae(out)
    assert type(loaded) is type(exported)
    assert loaded.cfg.metadata["hook_name"] == "layers.2.resid_post"
    x = torch.randn(16, D_IN)
    assert torch.equal(loaded.encode(x), exported.encode(x))
    assert torch.equal(loaded(x), exported(x))


def test_save_writes_requested_dtype(tmp_path):
    exported = _trained_like("topk").export()
    exported.cfg.dtype = "bfloat16"
    save_sae(exported, tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.W_enc.dtype == torch.bfloat16
    assert load_sae(tmp_path, dtype="float32").W_enc.dtype == torch.float32


def _write(dir_, cfg: dict, weights: dict):
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in weights.items()}, dir_ / "sae_weights.safetensors")
    return dir_


def _weights(names, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (D_IN, D_SAE), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)}
    return {n: torch.randn(shapes.get(n, (D_SAE,)), generator=g) for n in names}


V6 = {
    "d_in": D_IN,
    "d_sae": D_SAE,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.12.0"},
}


def test_loads_saelens_v6_jumprelu(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec", "threshold"])
    w["threshold"] = w["threshold"].abs()
    sae = load_sae(_write(tmp_path, {**V6, "architecture": "jumprelu"}, w))
    x = torch.randn(10, D_IN)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    expected = torch.where(pre > w["threshold"], pre.relu(), torch.zeros(()))
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"])
    assert sae.cfg.metadata["hook_name"] == "blocks.3.hook_resid_post"


def test_loads_saelens_v6_gated(tmp_path):
    w = _weights(["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"])
    sae = load_sae(_write(tmp_path, {**V6, "architecture": "gated"}, w))
    x = torch.randn(10, D_IN)
    xc = x - w["b_dec"]
    expected = ((xc @ w["W_enc"] + w["b_gate"]) > 0) * (
        xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
    ).relu()
    torch.testing.assert_close(sae.encode(x), expected)


def test_loads_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec"])
    cfg = {**V6, "architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": True}
    sae = load_sae(_write(tmp_path, cfg, w))
    x = torch.randn(10, D_IN)
    norm = w["W_dec"].norm(dim=1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norm
    top = pre.topk(3, dim=1)
    acts = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), (acts / norm) @ w["W_dec"] + w["b_dec"])


def test_loads_pre_v6_saelens_topk_cfg(tmp_path):
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cuda",
        "hook_point": "blocks.1.hook_resid_pre",
        "hook_point_layer": 1,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 5},
        "normalize_activations": False,
        "l1_coefficient": 0.0,
        "lr": 4e-4,
        "sae_lens_training_version": "3.20.0",
    }
    sae = load_sae(_write(tmp_path, cfg, _weights(["W_enc", "b_enc", "W_dec", "b_dec"])))
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5
    assert sae.cfg.normalize_activations == "none" and sae.cfg.device == "cpu"
    assert sae.cfg.metadata["hook_name"] == "blocks.1.hook_resid_pre"
    assert sae.cfg.metadata["lr"] == 4e-4
    assert ((sae.encode(torch.randn(7, D_IN)) != 0).sum(1) <= 5).all()


def test_loads_pre_v6_standard_with_scaling_factor(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec"])
    factor = torch.rand(D_SAE) + 0.5
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "h", "finetuning_scaling_factor": True}
    sae = load_sae(_write(tmp_path, cfg, {**w, "scaling_factor": factor}))
    z = torch.rand(4, D_SAE)
    torch.testing.assert_close(sae.decode(z), (z * factor) @ w["W_dec"] + w["b_dec"])


def test_typo_in_cfg_is_an_error_not_metadata(tmp_path):
    cfg = {**V6, "architecture": "standard", "apply_b_dec_to_inputs": False}
    with pytest.raises(ValueError, match="apply_b_dec_to_inputs.*apply_b_dec_to_input"):
        load_sae(_write(tmp_path / "a", cfg, _weights(["W_enc", "b_enc", "W_dec", "b_dec"])))
    cfg = {**V6, "architecture": "standard", "metadata": {"hook_nmae": "x"}}
    with pytest.raises(ValueError, match="hook_nmae.*hook_name"):
        load_sae(_write(tmp_path / "b", cfg, _weights(["W_enc", "b_enc", "W_dec", "b_dec"])))


def test_unknown_keys_are_kept_in_metadata(tmp_path):
    cfg = {**V6, "architecture": "standard", "my_team_note": "layer sweep"}
    sae = load_sae(_write(tmp_path, cfg, _weights(["W_enc", "b_enc", "W_dec", "b_dec"])))
    assert sae.cfg.metadata["my_team_note"] == "layer sweep"
    save_sae(sae, tmp_path / "again")
    assert load_sae(tmp_path / "again").cfg.metadata["my_team_note"] == "layer sweep"


def test_shape_mismatch_names_both_sizes(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec"])
    w["W_enc"] = torch.randn(D_IN + 1, D_SAE)
    with pytest.raises(
        ValueError, match=rf"W_enc has shape \[{D_IN + 1}, {D_SAE}\].*d_in={D_IN}.*\[{D_IN}, {D_SAE}\]"
    ):
        load_sae(_write(tmp_path, {**V6, "architecture": "standard"}, w))


def test_missing_and_unexpected_tensors(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec"])
    with pytest.raises(ValueError, match="missing: threshold"):
        load_sae(_write(tmp_path / "a", {**V6, "architecture": "jumprelu"}, w))
    with pytest.raises(ValueError, match="unexpected: b_enc"):
        load_sae(
            _write(
                tmp_path / "b",
                {**V6, "architecture": "gated"},
                {**w, **_weights(["b_gate", "b_mag", "r_mag"])},
            )
        )


def test_unknown_architecture_and_unsupported_normalisation(tmp_path):
    w = _weights(["W_enc", "b_enc", "W_dec", "b_dec"])
    with pytest.raises(ValueError, match="valid architectures: standard, topk, jumprelu, gated"):
        load_sae(_write(tmp_path / "a", {**V6, "architecture": "batchtopk"}, w))
    with pytest.raises(ValueError, match="layer_norm"):
        load_sae(
            _write(
                tmp_path / "b", {**V6, "architecture": "standard", "normalize_activations": "layer_norm"}, w
            )
        )
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "nothing")


def test_inference_registry():
    assert set(INFERENCE_ARCHITECTURES) >= {"standard", "topk", "jumprelu", "gated"}
    assert INFERENCE_ARCHITECTURES["relu"] is INFERENCE_ARCHITECTURES["standard"]


def test_failed_save_leaves_the_previous_files_and_no_temporaries(tmp_path, monkeypatch):
    from saeforge.sae import io

    first = _trained_like("topk").export()
    save_sae(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_save_file(tensors, path):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_sae(_trained_like("standard").export(), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    x = torch.randn(4, D_IN)
    assert torch.equal(load_sae(tmp_path).encode(x), first.encode(x))
