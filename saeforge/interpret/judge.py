"""Explanations and detection scoring by an LLM judge on any OpenAI-compatible endpoint.

The judge is whatever serves `POST {url}/v1/chat/completions` (vLLM, TGI, llama.cpp's server, ...). Requests run
on a thread pool of `concurrency` workers through `JudgeClient` (`interpret/client.py`: a wall-clock deadline
per request, a response-size cap, one error type, retries within a bounded budget). Results land on the records
as each request ends, so a failure keeps every explanation and score finished before it; with a journal on the
client, a rerun asks the judge only for the rest.

Explainer: shown the top contexts with the active tokens marked `<<token>>`, it answers with a short
explanation, or `UNCLEAR` when it sees no pattern (such latents count towards the unclear share and are not
scored).

Detection: each held-out context (activating ones from the quantile samples, non-activating ones from the
negatives) goes to the judge unmarked with the explanation; it answers YES (the feature is present) or NO.
An answer that is neither counts as a wrong prediction and as unparseable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saeforge.interpret.client import JudgeClient, JudgeError
from saeforge.interpret.records import DetectionScore, LatentRecord, TokenContext

__all__ = ["JudgeClient", "JudgeError", "judge_latents"]

EXPLAIN_SYSTEM = (
    "You are a meticulous interpretability researcher. You see text excerpts on which one feature of a "
    "language model's sparse autoencoder is active. Tokens where the feature is active are marked <<like "
    "this>>, strongest first in the list. Describe in one short sentence what the feature detects, focusing on "
    "the marked tokens. If you see no consistent pattern, answer exactly UNCLEAR. Answer with the "
    "explanation only."
)

DETECT_SYSTEM = (
    "You judge whether a text excerpt contains a feature described by an explanation. Answer with one word: "
    "YES if the feature is present anywhere in the excerpt, NO otherwise."
)


def render(ctx: TokenContext, mark: bool, threshold: float = 0.0) -> str:
    """The window as text; with mark=True, tokens with activation > threshold are wrapped in << >>."""
    parts = []
    for tok, a in zip(ctx.tokens, ctx.acts, strict=True):
        parts.append(f"<<{tok}>>" if mark and a is not None and a > threshold else tok)
    return "".join(parts)


def explain_prompt(record: LatentRecord, n_examples: int = 10) -> list[dict[str, str]]:
    lines = [f"Example {i + 1}: {render(c, mark=True)}" for i, c in enumerate(record.top[:n_examples])]
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": "\n".join(lines) + "\n\nExplanation:"},
    ]


def detect_prompt(explanation: str, ctx: TokenContext) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DETECT_SYSTEM},
        {
            "role": "user",
            "content": f"Explanation: {explanation}\nExcerpt: {render(ctx, mark=False)}\nAnswer:",
        },
    ]


def parse_explanation(text: str) -> tuple[str, bool]:
    """Judge text -> (explanation, unclear)."""
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if text.lower().startswith("explanation:"):
        text = text[len("explanation:") :].strip()
    unclear = not text or text.upper().rstrip(".") == "UNCLEAR"
    return text, unclear


def parse_yes_no(text: str) -> bool | None:
    """YES/NO (also true/false, 1/0) at the start of the answer -> bool, otherwise None (unparseable)."""
    m = re.match(r"\W*(yes|no|true|false|1|0)\b", text.strip().lower())
    if not m:
        return None
    return m.group(1) in ("yes", "true", "1")


def detection_contexts(record: LatentRecord, n: int) -> tuple[list[TokenContext], list[TokenContext]]:
    """Held-out activating contexts (quantile samples not in the explainer's top) and non-activating ones."""
    shown = {(c.seq, c.pos) for c in record.top}
    pos = [c for c in record.quantiles if (c.seq, c.pos) not in shown][:n]
    neg = record.negatives[:n]
    return pos, neg


def score_answers(labels: Sequence[bool], answers: Sequence[bool | None]) -> DetectionScore:
    """Confusion counts; None answers count as the wrong prediction and in n_unparseable."""
    tp = fp = tn = fn = bad = 0
    for y, a in zip(labels, answers, strict=True):
        if a is None:
            bad += 1
            a = not y
        if y and a:
            tp += 1
        elif y:
            fn += 1
        elif a:
            fp += 1
        else:
            tn += 1
    return DetectionScore(tp=tp, fp=fp, tn=tn, fn=fn, n_unparseable=bad)


@dataclass
class JudgeSummary:
    """Judge results over all latents: the unclear share and the mean scores of the clear ones."""

    n_latents: int
    n_unclear: int
    mean_balanced_accuracy: float | None
    mean_f1: float | None
    n_unparseable: int
    n_answers: int

    @property
    def unclear_share(self) -> float:
        return self.n_unclear / self.n_latents if self.n_latents else 0.0


def judge_latents(
    client: JudgeClient,
    records: list[LatentRecord],
    n_examples: int = 10,
    n_detect: int = 10,
    progress: Callable[[int], None] | None = None,
) -> JudgeSummary:
    """Explains then scores each record in place (explanation, unclear, detection); returns the summary.

    n_examples: top contexts shown to the explainer. n_detect: activating and non-activating held-out contexts
    each scored per latent. progress(n) is called with the number of requests just finished. Each explanation
    and each latent's detection score is set as soon as its requests are answered; on a JudgeError those stay,
    the client's journal (if any) is flushed, and the error is raised.
    """
    try:
        _explain_all(client, records, n_examples, progress)
        _detect_all(client, records, n_detect, progress)
    finally:
        if client.journal is not None:
            client.journal.flush()
    scored = [rec.detection for rec in records if rec.detection is not None]
    return JudgeSummary(
        n_latents=len(records),
        n_unclear=sum(rec.unclear for rec in records),
        mean_balanced_accuracy=sum(d.balanced_accuracy for d in scored) / len(scored) if scored else None,
        mean_f1=sum(d.f1 for d in scored) / len(scored) if scored else None,
        n_unparseable=sum(d.n_unparseable for d in scored),
        n_answers=sum(d.n for d in scored),
    )


def _explain_all(
    client: JudgeClient, records: list[LatentRecord], n_examples: int, progress: Callable[[int], None] | None
) -> None:
    def one(rec: LatentRecord) -> tuple[str, bool] | None:
        return parse_explanation(client.chat(explain_prompt(rec, n_examples))) if rec.top else None

    def done(i: int, out: tuple[str, bool] | None) -> None:
        text, unclear = out or ("", True)
        records[i].explanation, records[i].unclear = text or None, unclear
        if progress and out is not None:
            progress(1)

    client.map(one, records, done)


def _detect_all(
    client: JudgeClient, records: list[LatentRecord], n_detect: int, progress: Callable[[int], None] | None
) -> None:
    jobs: list[tuple[int, bool, TokenContext]] = []
    for r, rec in enumerate(records):
        if rec.explanation is None or rec.unclear:
            continue
        pos, neg = detection_contexts(rec, n_detect)
        jobs += [(r, True, c) for c in pos] + [(r, False, c) for c in neg]
    left = Counter(r for r, _, _ in jobs)
    got: dict[int, tuple[list[bool], list[bool | None]]] = {r: ([], []) for r in left}

    def one(job: tuple[int, bool, TokenContext]) -> bool | None:
        r, _, c = job
        return parse_yes_no(client.chat(detect_prompt(records[r].explanation or "", c)))

    def done(i: int, answer: bool | None) -> None:
        r, y, _ = jobs[i]
        got[r][0].append(y)
        got[r][1].append(answer)
        left[r] -= 1
        if not left[r]:
            records[r].detection = score_answers(*got[r])
        if progress:
            progress(1)

    client.map(one, jobs, done)
