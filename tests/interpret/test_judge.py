"""The judge against a local OpenAI-compatible server: prompts, scoring bookkeeping, retries, concurrency."""

from __future__ import annotations

import re
import time

import pytest
import torch

from saeforge.interpret.judge import (
    JudgeClient,
    JudgeError,
    parse_explanation,
    parse_yes_no,
    render,
    score_answers,
)
from saeforge.interpret.pipeline import interpret
from saeforge.sae.base import SAEConfig
from tests.interpret.helpers import ReluSAE, planted_stream
from tests.interpret.judge_server import JudgeServer


def words(ids):
    return [f" w{i}" for i in ids]


def sae_with_mixed_latent() -> ReluSAE:
    """Latents 0..7 fire on token 0..7; latent 8 fires on any of them (no single-token explanation)."""
    sae = ReluSAE(SAEConfig(architecture="relu_test", d_in=8, d_sae=9, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc[:, :8].copy_(torch.eye(8))
        sae.W_enc[:, 8] = torch.tensor([1.0, 1.3, 1.05, 1.2, 1.1, 0.8, 0.85, 0.78])
        sae.W_dec[:8].copy_(torch.eye(8))
    return sae


def test_parse_and_score():
    assert parse_explanation('"closing brackets"') == ("closing brackets", False)
    assert parse_explanation('the token "') == ('the token "', False)
    assert parse_explanation("Explanation: UNCLEAR.") == ("UNCLEAR.", True)
    assert [parse_yes_no(t) for t in ["YES", " no.", "Yes, clearly", "1", "maybe", "", "nope"]] == [
        True,
        False,
        True,
        True,
        None,
        None,
        None,
    ]
    s = score_answers([True, True, True, False, False], [True, None, False, None, False])
    assert (s.tp, s.fn, s.fp, s.tn, s.n_unparseable) == (1, 2, 1, 1, 2)
    assert s.balanced_accuracy == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert s.f1 == pytest.approx(2 / (2 + 1 + 2))


def test_explain_and_detect_against_local_server():
    batches, tokens = planted_stream(n_seq=80)
    sae = sae_with_mixed_latent()
    with JudgeServer(fail_first=2, garble_token="w30", rendezvous=2) as server:
        client = JudgeClient(server.url, "judge-model", api_key="sk-test", backoff=0.01, concurrency=3)
        interp = interpret(
            sae,
            batches,
            [1, 4, 8],
            k=8,
            tokens_of=lambda s: tokens[s],
            decode=words,
            judge=client,
            n_negatives=10,
        )
    assert server.n_failed == 2 and server.auth == {"Bearer sk-test"}
    assert 1 < server.max_in_flight <= 3
    by = interp.by_latent()
    for latent in (1, 4):
        rec = by[latent]
        assert rec.explanation == f"the word w{latent}" and not rec.unclear
    assert by[8].unclear and by[8].detection is None
    # The explainer saw the top contexts with exactly the active tokens marked.
    prompt = next(p for p in server.explain_prompts if render(by[4].top[0], mark=True) in p)
    for c in by[4].top:
        assert render(c, mark=True) in prompt
        assert len(re.findall(r"<<", render(c, mark=True))) == sum(a > 0 for a in c.acts)
    # Detection counts equal an independent replay of the server's rule on the held-out contexts.
    for latent in (1, 4):
        rec = by[latent]
        shown = {(c.seq, c.pos) for c in rec.top}
        pos = [c for c in rec.quantiles if (c.seq, c.pos) not in shown]
        expect = dict(tp=0, fp=0, tn=0, fn=0, n_unparseable=0)
        for y, c in [(True, c) for c in pos] + [(False, c) for c in rec.negatives]:
            text = "".join(c.tokens)
            if re.search(r"\bw30\b", text):
                expect["n_unparseable"] += 1
                expect["fn" if y else "fp"] += 1
                continue
            said = bool(re.search(rf"\bw{latent}\b", text))
            expect[
                {(True, True): "tp", (True, False): "fn", (False, True): "fp", (False, False): "tn"}[
                    (y, said)
                ]
            ] += 1
        got = rec.detection
        assert dict(tp=got.tp, fp=got.fp, tn=got.tn, fn=got.fn, n_unparseable=got.n_unparseable) == expect
        assert got.n == len(pos) + len(rec.negatives) > 0
    assert sum(by[i].detection.n_unparseable for i in (1, 4)) > 0, "the garbled answers were exercised"
    j = interp.meta["judge"]
    assert j["unclear_share"] == pytest.approx(1 / 3) and j["n_unparseable"] > 0


def test_retries_exhausted_raise_clear_error_quickly(monkeypatch):
    slept = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (s and slept.append(s), real_sleep(s)))
    with JudgeServer(always_fail=True) as server:
        client = JudgeClient(server.url, "m", retries=2, backoff=0.01)
        with pytest.raises(JudgeError, match="failed after 3 attempts .*HTTP 500"):
            client.chat([{"role": "user", "content": "hi"}])
    assert server.n_requests == 3
    # two backoffs, each within [0.5, 1.5] x backoff x 2^attempt: the budget is bounded by construction
    assert len(slept) == 2 and 0.005 <= slept[0] <= 0.015 and 0.01 <= slept[1] <= 0.03


def test_timeout_is_retried_then_reported():
    with JudgeServer(delay=0.5) as server:
        client = JudgeClient(server.url + "/v1", "m", retries=1, backoff=0.01, timeout=0.1)
        with pytest.raises(JudgeError, match="failed after 2 attempts"):
            client.chat([{"role": "user", "content": "Example 1: <<a>>"}])


def test_bad_url_rejected_before_work():
    with pytest.raises(ValueError, match="--judge-url"):
        JudgeClient("localhost:8000", "m")
