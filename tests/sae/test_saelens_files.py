"""Files written by the real SAELens 5.11 and 6.54 (tests/sae/saelens_files, made by its generate.py) load in
saeforge and compute what SAELens computed: the same latents and reconstructions, without SAELens installed."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saeforge.sae import load_sae

FILES = Path(__file__).with_name("saelens_files")
LAYOUTS = sorted(str(p.parent.relative_to(FILES)) for p in FILES.glob("v*/*/cfg.json"))
ARCHITECTURE = {"topk": "topk", "topk_rescaled": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def _check(sae, expected):
    torch.testing.assert_close(sae.encode(expected["x"]), expected["z"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.decode(expected["z"]), expected["x_hat"], rtol=1e-5, atol=1e-6)
    assert (expected["z"] != 0).any() and (expected["z"] == 0).any()


def test_both_versions_and_every_layout_are_present():
    assert {
        "v5/topk",
        "v5/finetuning_scaling_factor",
        "v5/expected_average_only_in",
        "v6/topk_rescaled",
    } <= set(LAYOUTS)
    assert len(LAYOUTS) == 12


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if not x.endswith("expected_average_only_in")])
def test_saelens_file_loads_and_matches_saelens(layout):
    expected = load_file(FILES / layout / "expected.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sae = load_sae(FILES / layout)
    assert sae.cfg.architecture == ARCHITECTURE.get(layout.split("/")[1], "standard")
    assert sae.cfg.metadata["hook_name"] == "blocks.2.hook_resid_pre"
    _check(sae, expected)


def test_v5_topk_takes_k_from_activation_fn_kwargs():
    cfg = json.loads((FILES / "v5/topk/cfg.json").read_text())
    assert "k" not in cfg and cfg["activation_fn_kwargs"] == {"k": 3}
    sae = load_sae(FILES / "v5/topk")
    assert sae.cfg.k == 3
    assert ((sae.encode(torch.randn(20, 8)) != 0).sum(-1) <= 3).all()


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_norm_scaling_factor_is_applied_when_given_and_missed_with_a_warning(version, tmp_path):
    src = FILES / version / "expected_average_only_in"
    expected = load_file(src / "expected.safetensors")
    scale = float(expected["norm_scaling_factor"])
    with pytest.warns(UserWarning, match="no norm_scaling_factor is given"):
        unscaled = load_sae(src)
    assert not torch.allclose(unscaled.decode(expected["z"]), expected["x_hat"])
    sae = load_sae(src, norm_scaling_factor=scale)
    assert sae.cfg.normalize_activations == "none"
    _check(sae, expected)
    # A cfg.json that carries the release's factor itself needs no argument.
    shutil.copytree(src, tmp_path / "release")
    cfg = json.loads((src / "cfg.json").read_text())
    (tmp_path / "release" / "cfg.json").write_text(json.dumps({**cfg, "norm_scaling_factor": scale}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(load_sae(tmp_path / "release"), expected)
    with pytest.raises(ValueError, match="must be a positive number"):
        load_sae(src, norm_scaling_factor=-1.0)
