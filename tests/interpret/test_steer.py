"""Steering and clamping during generate() on a tiny local GPT-2, and direction export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from saeforge.models import load_model, resolve_hook
from saeforge.steer import clamping, export_direction, generate, steering, sweep
from tests.interpret.helpers import relu_sae

HOOK = "layers.1.resid_post"
PROMPT = "The documentation of the module"


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return load_model(tiny_model("gpt2"))


@pytest.fixture(scope="module")
def sae():
    return relu_sae(64, 32, seed=5, hook=HOOK)


def no_hooks_left(loaded) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in loaded.model.modules())


def test_zero_coefficient_is_plain_generation_and_large_changes_it(gpt2, sae):
    plain, _ = generate(gpt2, PROMPT, max_new_tokens=12)
    direction = sae.W_dec.detach()[3]
    results = sweep(gpt2, HOOK, direction, [0.0, 200.0], PROMPT, max_new_tokens=12)
    assert results[0].token_ids == plain
    assert results[1].token_ids != plain
    assert no_hooks_left(gpt2)
    again, _ = generate(gpt2, PROMPT, max_new_tokens=12)
    assert again == plain


def test_steering_adds_exactly_c_times_direction(gpt2, sae):
    from saeforge.models import record

    direction = torch.randn(64)
    ids = gpt2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), record(gpt2, [HOOK]) as base:
        gpt2.model(input_ids=ids)
    # The recorder is registered first; steering still runs ahead of it (prepended), so it sees the sum.
    with torch.no_grad(), record(gpt2, [HOOK]) as steered, steering(gpt2, HOOK, direction, 2.5):
        gpt2.model(input_ids=ids)
    torch.testing.assert_close(steered[HOOK], base[HOOK] + 2.5 * direction, rtol=0, atol=1e-5)


def test_hook_removed_when_generate_raises(gpt2, sae):
    module = resolve_hook(gpt2, HOOK).module
    with pytest.raises(ValueError):
        with steering(gpt2, HOOK, sae.W_dec.detach()[0], 5.0):
            assert module._forward_hooks
            generate(gpt2, PROMPT, max_new_tokens=-3)
    assert no_hooks_left(gpt2)
    with pytest.raises(RuntimeError, match="boom"):
        with clamping(gpt2, HOOK, sae, 1, 3.0):
            raise RuntimeError("boom")
    assert no_hooks_left(gpt2)


def test_clamp_sets_latent_and_keeps_error_term(gpt2, sae):
    from saeforge.models import record

    ids = gpt2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), record(gpt2, [HOOK]) as base:
        gpt2.model(input_ids=ids)
    with torch.no_grad(), record(gpt2, [HOOK]) as clamped, clamping(gpt2, HOOK, sae, 7, 4.0):
        gpt2.model(input_ids=ids)
    # Reference in float64: x' = x - x_hat + decode(z with z_7 := 4).
    s64 = relu_sae(64, 32, seed=5).double()
    x = base[HOOK].double()
    z = s64.encode(x)
    z_c = z.clone()
    z_c[..., 7] = 4.0
    ref = x - s64.decode(z) + s64.decode(z_c)
    torch.testing.assert_close(clamped[HOOK].double(), ref, rtol=0, atol=1e-4)


def test_export_direction(sae, tmp_path):
    npy, st = export_direction(sae, 4, tmp_path)
    np.testing.assert_array_equal(np.load(npy), sae.W_dec.detach()[4].numpy())
    with safe_open(st, "pt") as f:
        assert torch.equal(f.get_tensor("direction"), sae.W_dec.detach()[4])
        meta = f.metadata()
    assert meta["latent"] == "4" and meta["hook"] == HOOK
    assert json.loads(meta["norm"]) == pytest.approx(float(sae.W_dec.detach()[4].norm()))
    _, st_n = export_direction(sae, 4, tmp_path / "n", normalize=True)
    with safe_open(st_n, "pt") as f:
        assert float(f.get_tensor("direction").norm()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="d_sae=32"):
        export_direction(sae, 32, tmp_path)
