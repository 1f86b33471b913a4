"""TrainConfig parsing and validation, per-architecture defaults, schedules."""

from __future__ import annotations

import math

import pytest
from _support import SyntheticSource

from saeforge.train import ConfigError, SAESpec, TrainConfig, train
from saeforge.train.defaults import resolve_optim
from saeforge.train.schedule import lr_at, sparsity_warmup_at


def _cfg(tmp_path, **over):
    data = dict(
        tokens=640, batch_size=64, out=str(tmp_path / "run"), saes=[dict(name="a", architecture="topk", k=4)]
    )
    data.update(over)
    return data


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "activations: store\ntokens: 1000\nbatch_size: 100\nout: run\n"
        "saes:\n  - {name: a, architecture: topk, k: 8, expansion_factor: 4, lr: 0.001}\n"
        "  - {name: b, architecture: jumprelu, target_l0: 20, d_sae: 256}\n"
    )
    cfg = TrainConfig.from_yaml(path, out=tmp_path / "other", resume=True)
    assert cfg.out == tmp_path / "other" and cfg.resume and cfg.total_steps == 10
    assert [s.name for s in cfg.saes] == ["a", "b"]
    assert cfg.saes[0].resolved_d_sae(64) == 256 and cfg.saes[1].resolved_d_sae(64) == 256


@pytest.mark.parametrize(
    "change, field",
    [
        ({"learning_rate": 1}, "learning_rate"),
        ({"saes": [dict(name="a", architecture="topk", k=4, bogus=1)]}, "saes.0.bogus"),
        (
            {"saes": [dict(name="a", architecture="topk", k=4), dict(name="a", architecture="topk", k=2)]},
            "duplicate",
        ),
        (
            {"saes": [dict(name="a", architecture="topk", k=4, d_sae=8, expansion_factor=2)]},
            "d_sae or expansion",
        ),
        ({"saes": [dict(name="a", architecture="topk", k=0)]}, "saes.0.k"),
        ({"saes": [dict(name="a/b", architecture="topk", k=4)]}, "saes.0.name"),
        ({"tokens": 10}, "batch_size"),
        ({"saes": []}, "saes"),
    ],
)
def test_bad_config_names_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.parse(_cfg(tmp_path, **change))


@pytest.mark.parametrize(
    "sae, message",
    [
        (
            dict(name="a", architecture="nope", k=4),
            r"saes\[0\] \(a\)\.architecture: unknown architecture 'nope'",
        ),
        (dict(name="a", architecture="topk", k=40, d_sae=32), r"saes\[0\] \(a\)\.k: k=40 exceeds d_sae=32"),
        (dict(name="a", architecture="topk", k=4, d_in=12), r"d_in=12 .* d_in=16"),
        (
            dict(name="a", architecture="topk", k=4, target_l0=3),
            r"SAE 'a':\n  saes\[0\]: topk sets its sparsity with k",
        ),
    ],
)
def test_data_dependent_errors_before_any_work(tmp_path, sae, message):
    cfg = TrainConfig.parse(_cfg(tmp_path, saes=[sae]))
    source = SyntheticSource(16, 64)
    with pytest.raises(ConfigError, match=message):
        train(cfg, source=source)
    assert not (tmp_path / "run").exists()
    assert source.position <= 1  # at most the batch peeked to learn d_in


def test_missing_logger_package_fails_before_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    cfg = TrainConfig.parse(_cfg(tmp_path, loggers=["jsonl", "wandb"]))
    with pytest.raises(ConfigError, match=r"loggers: 'wandb' needs the wandb package.*pip install wandb"):
        train(cfg, source=SyntheticSource(16, 64))


def test_architecture_defaults_follow_papers():
    # the TopK family: Gao's eps and schedule, ten times Gao's rate (measured for short runs,
    # docs/architectures.md), scaled as 1 / sqrt(d_sae)
    spec = SAESpec(name="a", architecture="batchtopk", k=4)
    btk = resolve_optim(spec, "batchtopk", d_sae=2**14, total_steps=10_000)
    assert btk.lr == pytest.approx(2e-3) and btk.eps == 6.25e-10
    wide = resolve_optim(spec, "batchtopk", d_sae=2**16, total_steps=10_000)
    assert wide.lr == pytest.approx(1e-3)  # 2e-3 / sqrt(4)
    for arch in ("topk", "matryoshka"):
        same = resolve_optim(SAESpec(name="a", architecture=arch, k=4), arch, d_sae=2**16, total_steps=10_000)
        assert same == wide
    # a fixed lambda warms up as in the paper; with target_l0 (the default) the controller starts at step 0
    fixed = dict(name="b", architecture="jumprelu", sparsity_coefficient=0.5)
    jr = resolve_optim(SAESpec(**fixed), "jumprelu", d_sae=1024, total_steps=1_000_000)
    # jumprelu and gated: 3e-3 at 512 latents, scaled as 1 / sqrt(d_sae) (measured in docs/architectures.md)
    assert (jr.lr, jr.betas, jr.sparsity_warmup_steps) == (pytest.approx(3e-3 / 2**0.5), (0.0, 0.999), 10_000)
    assert jr.optimizer == "adam"
    short = resolve_optim(SAESpec(**fixed), "jumprelu", d_sae=1024, total_steps=2_000)
    assert short.sparsity_warmup_steps == 200  # capped at 10% of a short run
    controlled = resolve_optim(SAESpec(name="b", architecture="jumprelu"), "jumprelu", 1024, 2_000)
    assert controlled.sparsity_warmup_steps == 0
    std = resolve_optim(
        SAESpec(name="c", architecture="relu", sparsity_coefficient=1.0),
        "standard",
        d_sae=1024,
        total_steps=1000,
    )
    assert (std.lr_schedule, std.lr_decay_steps, std.sparsity_warmup_steps) == ("linear", 200, 50)
    mine = resolve_optim(
        SAESpec(name="d", architecture="jumprelu", lr=1e-3, betas=(0.5, 0.9), lr_schedule="cosine"),
        "jumprelu",
        1024,
        100,
    )
    assert (mine.lr, mine.betas, mine.lr_schedule, mine.eps) == (1e-3, (0.5, 0.9), "cosine", 1e-8)


def _reference_lr(s, T, lr, W, kind, f, D):
    # Written from the definitions in docs/training.md, step by step.
    if s < W:
        return lr * (s + 1) / W
    if kind == "constant":
        return lr
    if kind == "cosine":
        return lr * f + lr * (1 - f) * (math.cos(math.pi * (s - W) / (T - W)) + 1) / 2
    if s < T - D:
        return lr
    return lr - lr * (1 - f) * (s - (T - D)) / D


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_lr_schedules_against_reference(kind):
    T, W, D = 100, 10, 30
    spec = SAESpec(
        name="a",
        architecture="topk",
        k=4,
        lr=1e-3,
        lr_schedule=kind,
        lr_warmup_steps=W,
        lr_end_fraction=0.1,
        lr_decay_steps=D,
    )
    o = resolve_optim(spec, "topk", 64, T)
    got = [lr_at(s, T, o) for s in range(T)]
    want = [_reference_lr(s, T, 1e-3, W, kind, 0.1, D) for s in range(T)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(1e-4) and max(got) == pytest.approx(1e-3)
    if kind != "constant":
        assert got[-1] < 0.15e-3 and got[-1] >= 0.1e-3


def test_sparsity_warmup():
    assert [sparsity_warmup_at(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert sparsity_warmup_at(0, 0) == 1.0


def test_spec_fields_passed_to_the_sae_config_have_its_constraints():
    """SAESpec's pass-through sparsity fields cannot drift from the architectures' own declarations."""
    from saeforge.sae.config import TrainingSAEConfig
    from saeforge.sparsity import SPARSITY_FIELDS

    for name in SPARSITY_FIELDS:
        spec, sae = SAESpec.model_fields[name], TrainingSAEConfig.model_fields[name]
        assert sorted(map(repr, spec.metadata)) == sorted(map(repr, sae.metadata)), name
        assert spec.description == sae.description and spec.description, name  # one declaration
