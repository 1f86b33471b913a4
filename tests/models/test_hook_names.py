"""TransformerLens spellings of the canonical hooks: the name table, and resolution through every entry point."""

from __future__ import annotations

import pytest
import torch

from saeforge.hook_names import canonical_hook_name, transformerlens_hook_name
from saeforge.models import load_model, resolve_hook, run_hooks
from tests.tiny_models import N_LAYERS


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "attn_out", "mlp_out"])
def test_names_map_both_ways(site):
    assert transformerlens_hook_name(f"layers.12.{site}") == f"blocks.12.hook_{site}"
    assert canonical_hook_name(f"blocks.12.hook_{site}") == f"layers.12.{site}"
    assert transformerlens_hook_name(f"blocks.12.hook_{site}") == f"blocks.12.hook_{site}"
    assert canonical_hook_name(f"layers.12.{site}") == f"layers.12.{site}"


@pytest.mark.parametrize(
    "name",
    ["model.layers.3.mlp", "model.layers.3.mlp:input", "blocks.3.hook_resid_mid", "blocks.3.attn.hook_z"],
)
def test_names_without_a_counterpart_map_to_themselves(name):
    assert canonical_hook_name(name) == name
    assert transformerlens_hook_name(name) is None


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_transformerlens_spelling_resolves_to_the_canonical_hook(tiny_model, family):
    loaded = load_model(tiny_model(family))
    ids = torch.randint(5, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    for layer in range(N_LAYERS):
        for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
            tl, ours = f"blocks.{layer}.hook_{site}", f"layers.{layer}.{site}"
            point = resolve_hook(loaded, tl)
            assert point == resolve_hook(loaded, ours)
            assert point.name == ours
    acts = run_hooks(loaded, ids, hooks=["blocks.1.hook_mlp_out", "layers.2.resid_post"])
    assert list(acts) == ["blocks.1.hook_mlp_out", "layers.2.resid_post"]
    plain = run_hooks(loaded, ids, hooks=["layers.1.mlp_out"])["layers.1.mlp_out"]
    assert torch.equal(acts["blocks.1.hook_mlp_out"], plain)


def test_both_spellings_of_one_hook_are_a_repeat(tiny_model):
    from saeforge.activations import CaptureConfig

    loaded = load_model(tiny_model("gpt2"))
    with pytest.raises(ValueError, match="repeat"):
        run_hooks(
            loaded,
            torch.ones(1, 3, dtype=torch.long),
            hooks=["blocks.0.hook_resid_post", "layers.0.resid_post"],
        )
    base = dict(model="m", data="builtin", tokens=10, out="o")
    assert CaptureConfig(**base, hooks=["blocks.2.hook_attn_out", "x.y"]).hooks == [
        "layers.2.attn_out",
        "x.y",
    ]
    with pytest.raises(ValueError, match="repeated"):
        CaptureConfig(**base, hooks=["blocks.2.hook_attn_out", "layers.2.attn_out"])


def test_run_config_hooks_are_canonical():
    from saeforge.pipeline import RunConfig

    run = RunConfig(
        model="m", data="builtin", hooks=["blocks.0.hook_resid_post"], train={"tokens": 10, "saes": []}
    )
    assert run.hooks == ["layers.0.resid_post"]
