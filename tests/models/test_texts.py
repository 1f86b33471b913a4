"""`text_activations`: one [T_i, d] tensor per string, equal to a forward pass over that string alone."""

from __future__ import annotations

import pytest
import torch

import saeforge
from saeforge.models import load_model, run_hooks

TEXTS = [
    "The function returns a list.",
    "Raise an error when the file is missing or empty, then retry.",
    "Hi",
]


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_each_string_gets_its_own_activations(tiny_model, family):
    torch.set_num_threads(1)
    loaded = load_model(tiny_model(family))
    acts = saeforge.text_activations(loaded, TEXTS, "blocks.1.hook_resid_post", batch_size=2)
    assert len(acts) == len(TEXTS)
    for text, a in zip(TEXTS, acts, strict=True):
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
        alone = run_hooks(loaded, ids, torch.ones_like(ids), ["layers.1.resid_post"])["layers.1.resid_post"][
            0
        ]
        assert a.shape == (ids.shape[1], loaded.d_model) and a.dtype == torch.float32
        torch.testing.assert_close(a, alone, rtol=1e-5, atol=1e-5)
    assert len({a.shape[0] for a in acts}) == 3  # padding was cut off


def test_path_string_and_truncation(tiny_model):
    acts = saeforge.text_activations(
        str(tiny_model("gpt2")), "one string " * 40, "layers.0.mlp_out", max_length=7
    )
    assert [tuple(a.shape) for a in acts] == [(7, 64)]
    with pytest.raises(ValueError, match="batch_size"):
        saeforge.text_activations(str(tiny_model("gpt2")), ["x"], "layers.0.mlp_out", batch_size=0)
