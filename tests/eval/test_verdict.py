"""Verdict rules on crafted metrics (docs/evaluation.md)."""

from __future__ import annotations

import pytest

from saeforge.eval import VERDICTS, evaluate, verdict

HEALTHY = {
    "fvu": 0.15,
    "ce_loss_score": 0.93,
    "dead_fraction": 0.02,
    "duplication": 0.01,
    "dense_fraction_30": 0.0,
    "l0": 32.0,
    "d_in": 384,
    "dead_reliable": True,
    "tokens": 100_000,
}


def judge(**changes):
    return verdict({**HEALTHY, **changes})


def test_healthy_is_good():
    label, evidence = judge()
    assert label == "good"
    assert evidence.startswith("good: FVU 0.15, CE score 0.93")


def test_deceptively_good_names_the_problems():
    label, evidence = judge(fvu=0.02, dead_fraction=0.68, duplication=0.39)
    assert label == "deceptively-good"
    assert evidence == "deceptively good: FVU 0.02, CE score 0.93, but 68% dead, duplication 0.39"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"dense_fraction_30": 0.05}, "fire on >30%"),
        ({"l0": 300.0}, "not sparse"),
        ({"duplication": 0.2}, "duplication 0.2"),
        ({"dead_fraction": 0.35}, "35% dead"),
    ],
)
def test_each_health_problem_makes_a_good_reconstruction_deceptive(changes, problem):
    label, evidence = judge(**changes)
    assert label == "deceptively-good" and problem in evidence


def test_dead():
    assert judge(dead_fraction=0.95)[0] == "dead"  # whatever the reconstruction
    assert judge(fvu=0.6, dead_fraction=0.4)[0] == "dead"
    assert judge(fvu=0.6, dead_fraction=0.4, duplication=0.3)[0] == "dead"  # dead is checked first


def test_duplicated():
    assert judge(duplication=0.6)[0] == "duplicated"
    assert judge(ce_loss_score=0.5, duplication=0.2)[0] == "duplicated"


def test_noisy():
    assert judge(fvu=0.5)[0] == "noisy"
    assert judge(ce_loss_score=0.6)[0] == "noisy"
    assert judge(fvu=None)[0] == "noisy"
    assert judge(ce_loss_score=None, pooled_cosine_score=0.5)[0] == "noisy"  # encoder models
    assert judge(ce_loss_score=None, pooled_cosine_score=0.9)[0] == "good"


def test_without_downstream_metrics():
    m = dict(HEALTHY)
    del m["ce_loss_score"]
    label, evidence = verdict(m)
    assert label == "good" and "CE" not in evidence


def test_thin_evidence_is_flagged():
    _, evidence = judge(dead_fraction=0.5, dead_reliable=False, tokens=2048)
    assert "only 2048 tokens" in evidence


def test_identity_sae_is_deceptively_good(saes, acts):
    # perfect reconstruction, but every coordinate is its own latent: L0 = d_in is not a sparse code
    m = evaluate(saes.identity(16), [acts(256, 16)])
    assert m["verdict"] == "deceptively-good" and "not sparse" in m["verdict_evidence"]
    assert m["verdict"] in VERDICTS
