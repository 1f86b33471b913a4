"""The causal check on a fine-tune with a planted change: the fine-tuned model is the base model plus a constant
vector v added to layer 1's MLP output, and the crosscoder's fine-tune-only latent writes exactly v."""

from __future__ import annotations

import pytest
import torch

from saeforge.diff.causal import causal_check
from saeforge.models import load_model
from tests.diff.coders import HandCrossCoder

HOOK = "layers.1.mlp_out"


@pytest.fixture(scope="module")
def pair(tiny_model, tmp_path_factory):
    base_dir = tiny_model("gpt2")
    base = load_model(base_dir)
    ft = load_model(base_dir)
    g = torch.Generator().manual_seed(0)
    v = 2.0 * torch.randn(base.d_model, generator=g)
    with torch.no_grad():
        ft.model.transformer.h[1].mlp.c_proj.bias += v
    return base, ft, v


def _coder(v: torch.Tensor, n_other: int = 6):
    """Latent 0: always 1, writes v into the fine-tuned model only. Latents 1..: always 1, write random
    directions into both models (removing them from the fine-tuned model moves it away from the base)."""
    d = v.shape[0]
    g = torch.Generator().manual_seed(1)
    W_dec = torch.zeros(1 + n_other, 2, d)
    W_dec[0, 1] = v
    W_dec[1:] = torch.randn(n_other, 1, d, generator=g).expand(n_other, 2, d)
    return HandCrossCoder(torch.zeros(2, d, 1 + n_other), W_dec, torch.zeros(2, d), torch.ones(1 + n_other))


def test_removing_the_planted_latent_closes_the_kl(pair):
    base, ft, v = pair
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(3, 700, (4, 24), generator=g)
    none = torch.zeros_like(tokens, dtype=torch.bool)
    out = causal_check(base, ft, HOOK, _coder(v), tokens, none, [0], list(range(7)), n_controls=3)
    assert out["kl_base_finetuned"] > 1e-3
    assert out["fraction_closed"] == pytest.approx(1.0, abs=1e-4)
    assert out["kl_after_removal"] == pytest.approx(0.0, abs=1e-6)
    assert len(out["control"]["fraction_closed"]) == 3
    assert all(c < 0.5 for c in out["control"]["fraction_closed"])
    special = none.clone()
    special[:, 0] = True  # not scored, and keeps its fine-tuned activation, which later positions attend to
    kept = causal_check(base, ft, HOOK, _coder(v), tokens, special, [0], list(range(7)), n_controls=1)
    assert kept["positions_scored"] == 4 * 23
    assert 0.0 < kept["fraction_closed"] < 1.0


def test_refuses_an_empty_set(pair):
    base, ft, v = pair
    tokens = torch.randint(3, 700, (1, 8))
    with pytest.raises(ValueError, match="at least one latent"):
        causal_check(
            base, ft, HOOK, _coder(v), tokens, torch.zeros_like(tokens, dtype=torch.bool), [], [1, 2]
        )
