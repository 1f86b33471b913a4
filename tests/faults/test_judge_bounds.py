"""The judge client is bounded in time, memory and failure, and a failed judging run resumes where it stopped.

Each misbehaving server (tests/faults/bad_judge.py) must end as one JudgeError after retries + 1 attempts. The
assertions are on the error and on what the server saw (the client hung up before the response was complete),
never on elapsed time.
"""

from __future__ import annotations

import copy

import pytest

from saeforge.interpret.client import AnswerJournal, JudgeClient, JudgeError
from saeforge.interpret.contexts import top_contexts
from saeforge.interpret.judge import judge_latents
from tests.faults.bad_judge import DRIBBLE_BYTES, HUGE_BYTES, BadJudge
from tests.interpret.helpers import identity_sae, planted_stream
from tests.interpret.judge_server import JudgeServer

HELLO = [{"role": "user", "content": "Example 1: <<a>>"}]

# mode -> (what the error says, the server saw the client leave before the response was complete)
FAULTS = {
    "dribble": ("within the 0.3 s deadline", True),
    "hang": ("within the 0.3 s deadline", True),
    "huge": ("cap", True),
    "huge_declared": ("announced a 1,000,000,000-byte answer", True),
    "garbage": ("non-JSON", False),
    "truncated": ("IncompleteRead", False),
    "reset": ("Connection", False),
    "no_choices": ("without choices", False),
    "wrong_type": ("of type int", False),
}


@pytest.mark.parametrize("mode", list(FAULTS))
def test_every_fault_ends_as_one_error_within_the_bounds(mode):
    says, client_left = FAULTS[mode]
    with BadJudge(mode) as server:
        client = JudgeClient(
            server.url, "m", timeout=0.3, retries=1, backoff=0.001, max_response_bytes=100_000
        )
        with pytest.raises(JudgeError, match=f"failed after 2 attempts .*{says}"):
            client.chat(HELLO)
        log = server.wait_for(2)
    assert len(log) == 2, "each attempt is one request, and the failure was retried once"
    if client_left:
        assert all(e["client_left"] for e in log), log
    if mode == "dribble":
        assert all(e["sent"] < DRIBBLE_BYTES for e in log)
    if mode == "huge":
        assert all(e["sent"] < HUGE_BYTES for e in log)


def sixteen_latents():
    """Records of 16 latents of an identity SAE, each firing on its own planted token."""
    batches, tokens = planted_stream(n_seq=80, d_in=16, vocab=60)
    records = top_contexts(
        identity_sae(16), batches, list(range(16)), 6, n_bands=2, per_band=2, tokens_of=lambda s: tokens[s]
    )
    assert all(r.top for r in records)
    return records


def judged(records, server, journal, concurrency=3):
    client = JudgeClient(server.url, "m", retries=0, backoff=0.001, concurrency=concurrency, journal=journal)
    return judge_latents(client, records, n_examples=4, n_detect=3)


def test_a_failure_keeps_what_was_answered_and_a_rerun_asks_only_for_the_rest(tmp_path):
    fresh = sixteen_latents()
    with JudgeServer() as server:
        judged(copy.deepcopy(fresh), server, AnswerJournal(tmp_path / "full.json"))
        n_full = server.n_requests
    assert n_full > 16

    records = copy.deepcopy(fresh)
    path = tmp_path / "judge_answers.json"
    with JudgeServer(fail_after=12) as server:
        with pytest.raises(JudgeError, match="HTTP 500"):
            judged(records, server, AnswerJournal(path))
    assert sum(r.explanation is not None for r in records) == 12, "the 12 explanations stay on the records"
    assert len(AnswerJournal(path)) == 12, "and on disk"

    again = copy.deepcopy(fresh)
    with JudgeServer() as server:
        summary = judged(again, server, AnswerJournal(path))
        assert server.n_requests == n_full - 12
    full = copy.deepcopy(fresh)
    with JudgeServer() as server:
        ref = judged(full, server, None, concurrency=1)
    assert summary == ref
    assert [(r.explanation, r.detection) for r in again] == [(r.explanation, r.detection) for r in full]


def test_a_journal_that_is_not_one_is_refused(tmp_path):
    (tmp_path / "j.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a saeforge judge journal: delete it"):
        AnswerJournal(tmp_path / "j.json")


def test_a_wrong_url_is_not_retried():
    with JudgeServer() as server:
        client = JudgeClient(server.url + "/v2/chat/completions", "m", retries=3, backoff=0.001)
        with pytest.raises(JudgeError, match="HTTP 404 .*check --judge-url") as e:
            client.chat(HELLO)
    assert server.n_requests == 1 and not e.value.retryable
