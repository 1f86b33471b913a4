"""Explanations and detection scoring by an LLM judge on any OpenAI-compatible endpoint.

The judge is whatever serves `POST {url}/v1/chat/completions` (vLLM, TGI, llama.cpp's server, ...). Requests run
on a thread pool of `concurrency` workers, each with a timeout and retries with exponential backoff on
connection errors, timeouts, HTTP 408/409/429 and 5xx.

Explainer: shown the top contexts with the active tokens marked `<<token>>`, it answers with a short
explanation, or `UNCLEAR` when it sees no pattern (such latents count towards the unclear share and are not
scored).

Detection: each held-out context (activating ones from the quantile samples, non-activating ones from the
negatives) goes to the judge unmarked with the explanation; it answers YES (the feature is present) or NO.
An answer that is neither counts as a wrong prediction and as unparseable.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from saeforge.interpret.records import DetectionScore, LatentRecord, TokenContext

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge endpoint failed after all retries, or answered with something that is not a chat completion."""


@dataclass
class JudgeClient:
    """An OpenAI-compatible chat-completions client.

    url: base URL (`http://host:8000` or `http://host:8000/v1`); model: the served model name; api_key: sent
    as a Bearer token when set. timeout: seconds per request. retries: extra attempts after the first.
    backoff: first retry delay in seconds (doubled each retry, with jitter). concurrency: parallel requests.
    """

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    concurrency: int = 8
    max_tokens: int = 200
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not re.match(r"^https?://", self.url):
            raise ValueError(f"--judge-url {self.url!r} must start with http:// or https://")
        if self.concurrency < 1:
            raise ValueError(f"--judge-concurrency must be >= 1, got {self.concurrency}")

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/chat/completions"

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One chat completion -> the assistant's text. Raises JudgeError when every attempt failed."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code in RETRY_STATUS:
                    continue
                raise JudgeError(
                    f"judge {self.endpoint} answered {last}: check --judge-url/--judge-model"
                ) from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {e}"
                continue
            except json.JSONDecodeError as e:
                raise JudgeError(f"judge {self.endpoint} answered non-JSON: {e}") from e
            try:
                return payload["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"judge {self.endpoint} answered without choices[0].message.content") from e
        raise JudgeError(f"judge {self.endpoint} failed after {self.retries + 1} attempts (last: {last})")

    def map(self, fn: Callable, items: Sequence) -> list:
        """fn over items on `concurrency` threads, results in order."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))


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
    each scored per latent. progress(n) is called with the number of requests just finished.
    """

    def one_explain(rec: LatentRecord) -> tuple[str, bool]:
        if not rec.top:
            return "", True
        out = parse_explanation(client.chat(explain_prompt(rec, n_examples)))
        if progress:
            progress(1)
        return out

    for rec, (text, unclear) in zip(records, client.map(one_explain, records), strict=True):
        rec.explanation, rec.unclear = text or None, unclear
    jobs: list[tuple[int, bool, TokenContext]] = []
    for r, rec in enumerate(records):
        if rec.unclear:
            continue
        pos, neg = detection_contexts(rec, n_detect)
        jobs += [(r, True, c) for c in pos] + [(r, False, c) for c in neg]

    def one_detect(job: tuple[int, bool, TokenContext]) -> bool | None:
        r, _, c = job
        ans = parse_yes_no(client.chat(detect_prompt(records[r].explanation or "", c)))
        if progress:
            progress(1)
        return ans

    answers = client.map(one_detect, jobs)
    per: dict[int, tuple[list[bool], list[bool | None]]] = {}
    for (r, y, _), a in zip(jobs, answers, strict=True):
        ys, as_ = per.setdefault(r, ([], []))
        ys.append(y)
        as_.append(a)
    for r, (ys, as_) in per.items():
        records[r].detection = score_answers(ys, as_)
    scored = [rec.detection for rec in records if rec.detection is not None]
    return JudgeSummary(
        n_latents=len(records),
        n_unclear=sum(rec.unclear for rec in records),
        mean_balanced_accuracy=sum(d.balanced_accuracy for d in scored) / len(scored) if scored else None,
        mean_f1=sum(d.f1 for d in scored) / len(scored) if scored else None,
        n_unparseable=sum(d.n_unparseable for d in scored),
        n_answers=sum(d.n for d in scored),
    )
