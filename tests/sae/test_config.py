"""TrainingSAEConfig validation and the architecture registries."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from saeforge.sae import (
    INFERENCE_ARCHITECTURES,
    TRAINING_ARCHITECTURES,
    TrainingSAEConfig,
    create_training_sae,
)
from saeforge.sae.matryoshka import default_group_sizes


def test_registry_names():
    assert set(TRAINING_ARCHITECTURES) == {
        "standard",
        "relu",
        "topk",
        "batchtopk",
        "jumprelu",
        "gated",
        "matryoshka",
    }
    assert set(INFERENCE_ARCHITECTURES) == {"standard", "relu", "topk", "jumprelu", "gated"}
    assert create_training_sae(dict(architecture="relu", d_in=4, d_sae=8)).architecture == "standard"


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(
        ValidationError, match="valid architectures: standard, topk, batchtopk, jumprelu, gated, matryoshka"
    ):
        TrainingSAEConfig(architecture="topK", d_in=4, d_sae=8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"architecture": "topk", "k": 9}, "k=9 is larger than d_sae=8"),
        ({"architecture": "topk", "k": 2, "k_aux": 9}, "k_aux=9 is larger than d_sae=8"),
        ({"architecture": "batchtopk"}, r"k=32 \(the default\) is larger than d_sae=8"),
        (
            {"architecture": "jumprelu", "sparsity_coefficient": 1.0, "target_l0": 2},
            "either sparsity_coefficient or",
        ),
        ({"architecture": "topk", "k": 2, "target_l0": 2}, "sets its sparsity with k"),
        ({"architecture": "gated", "target_l0": 20}, "target_l0=20.0 is larger than d_sae=8"),
        (
            {"architecture": "topk", "k": 2, "group_sizes": [4, 4]},
            "only applies to architecture 'matryoshka'",
        ),
        (
            {"architecture": "matryoshka", "k": 2, "group_sizes": [4, 3]},
            "must be positive and sum to d_sae=8",
        ),
        ({"architecture": "topk", "kk": 2}, "kk"),
        ({"architecture": "topk", "b_dec_init": "median"}, "b_dec_init"),
    ],
)
def test_bad_configs_are_rejected_with_the_field_named(fields, message):
    with pytest.raises(ValidationError, match=message):
        TrainingSAEConfig(d_in=4, d_sae=8, **fields)


def test_defaults_give_every_architecture_the_same_sparsity():
    for arch in ("topk", "batchtopk", "matryoshka"):
        assert TrainingSAEConfig(architecture=arch, d_in=8, d_sae=256).k == 32
    for arch in ("standard", "jumprelu", "gated"):
        cfg = TrainingSAEConfig(architecture=arch, d_in=8, d_sae=256)
        assert cfg.target_l0 == 32 and cfg.sparsity_coefficient is None
        assert TrainingSAEConfig(architecture=arch, d_in=8, d_sae=256, k=10).target_l0 == 10
        assert (
            TrainingSAEConfig(architecture=arch, d_in=8, d_sae=256, sparsity_coefficient=3.0).target_l0
            is None
        )


def test_default_group_sizes_double_and_sum_to_d_sae():
    assert default_group_sizes(1024) == [64, 64, 128, 256, 512]
    for d_sae in (1, 7, 100, 16384):
        sizes = default_group_sizes(d_sae)
        assert sum(sizes) == d_sae and all(s > 0 for s in sizes)
    assert TrainingSAEConfig(architecture="matryoshka", d_in=4, d_sae=1024).group_sizes == [
        64,
        64,
        128,
        256,
        512,
    ]


def test_training_state_is_checkpointable_as_tensors():
    for arch in ("batchtopk", "jumprelu", "gated"):
        sae = create_training_sae(dict(architecture=arch, d_in=4, d_sae=8, k=2))
        state = sae.state_dict()
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        clone = create_training_sae(dict(architecture=arch, d_in=4, d_sae=8, k=2, seed=5))
        clone.load_state_dict(state)
        for name, value in clone.state_dict().items():
            assert torch.equal(value, state[name]), name


def test_seed_sets_the_initialisation():
    a, b, c = (
        create_training_sae(dict(architecture="topk", d_in=4, d_sae=8, k=2, seed=s)) for s in (1, 1, 2)
    )
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
