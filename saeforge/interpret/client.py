"""A bounded OpenAI-compatible chat-completions client, and the answer journal that makes judging resumable.

Bounds, per `chat` call (one completion):
- time: each attempt has a wall-clock deadline of `timeout` seconds from connect to the last body byte. Socket
  timeouts only bound each read (a server sending one byte a second never trips them), so a timer shuts the
  socket down when the deadline passes; whatever the client was doing then (connecting, sending, reading the
  status line, headers or body) fails at once. With `retries` extra attempts and backoffs of at most
  1.5 x backoff x 2^i, one call never takes longer than `budget` = (retries + 1) x timeout + sum of the backoffs.
- memory: a response larger than `max_response_bytes` is refused (by its Content-Length before reading, else once
  that many bytes arrived), so the client never buffers more than the cap.
- failure: every transport and parse failure (refused or reset connection, deadline, truncated body, oversized
  body, non-JSON, no `choices[0].message.content` string, HTTP 408/409/429/5xx) is a `JudgeError` and is retried
  with exponential backoff within the budget; other HTTP statuses (wrong URL, model or key) raise at once.

`AnswerJournal`: answers by request digest (sha256 of the request body: model, messages, sampling settings), saved
atomically (`saeforge.atomic`) at most every `flush_every` seconds and always on `flush()`. A rerun with the same
journal sends only the requests it has no answer for.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from saeforge.atomic import write_text

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
JOURNAL_VERSION = 1


class JudgeError(RuntimeError):
    """The judge endpoint failed: after all retries (`retryable` failures), or at once (`retryable` False)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class AnswerJournal:
    """Judge answers by request digest, persisted atomically to `path` (JSON). Thread-safe."""

    def __init__(self, path: str | Path, flush_every: float = 1.0):
        self.path = Path(path)
        self.flush_every = flush_every
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        if self.path.exists():
            self._answers = self._read()

    def _read(self) -> dict[str, str]:
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            ok = d.get("format_version") == JOURNAL_VERSION and isinstance(d.get("answers"), dict)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"{self.path} is not a saeforge judge journal: delete it to ask the judge again")
        return {str(k): str(v) for k, v in d["answers"].items()}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._answers.get(key)

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self._answers[key] = answer
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_every:
                self._write()

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        text = json.dumps({"format_version": JOURNAL_VERSION, "answers": self._answers}, indent=0)
        write_text(self.path, text)
        self._dirty = False
        self._last_flush = time.monotonic()


def completion_text(payload: object) -> str:
    """choices[0].message.content of a chat-completion payload (None content -> ""); JudgeError otherwise."""
    try:
        content = payload["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError) as e:
        raise JudgeError(f"answered without choices[0].message.content ({type(e).__name__}: {e})") from e
    if content is None:
        return ""
    if not isinstance(content, str):
        raise JudgeError(
            f"answered choices[0].message.content of type {type(content).__name__}, not a string"
        )
    return content


def _read_capped(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """The body of `resp`, refusing more than `cap` bytes and a body shorter than its Content-Length."""
    declared = resp.getheader("Content-Length")
    length = int(declared) if declared and declared.strip().isdigit() else None
    if length is not None and length > cap:
        raise JudgeError(
            f"announced a {length:,}-byte answer, over the {cap:,}-byte cap (max_response_bytes)"
        )
    chunks, n = [], 0
    while True:
        chunk = resp.read(min(65536, cap + 1 - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
        if n > cap:
            raise JudgeError(f"sent more than the {cap:,}-byte cap (max_response_bytes)")
    if length is not None and n < length:
        raise JudgeError(f"closed the connection after {n:,} of {length:,} bytes (IncompleteRead)")
    return b"".join(chunks)


@dataclass
class JudgeClient:
    """An OpenAI-compatible chat-completions client, bounded in time, memory and failure (see the module).

    url: base URL (`http://host:8000` or `http://host:8000/v1`); model: the served model name; api_key: sent
    as a Bearer token when set. timeout: wall-clock seconds per attempt. retries: extra attempts after the first.
    backoff: first retry delay in seconds (doubled each retry, with jitter). concurrency: parallel requests.
    max_response_bytes: the largest answer read. journal: answers already known (sent requests are skipped).
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
    max_response_bytes: int = 1 << 20
    journal: AnswerJournal | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.match(r"^https?://", self.url):
            raise ValueError(f"--judge-url {self.url!r} must start with http:// or https://")
        if self.concurrency < 1:
            raise ValueError(f"--judge-concurrency must be >= 1, got {self.concurrency}")
        if self.max_response_bytes < 1:
            raise ValueError(f"--judge-max-response-bytes must be >= 1, got {self.max_response_bytes}")

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/chat/completions"

    @property
    def budget(self) -> float:
        """The most seconds one `chat` call can take: every attempt's deadline plus the longest backoffs."""
        return (self.retries + 1) * self.timeout + sum(1.5 * self.backoff * 2**i for i in range(self.retries))

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One chat completion -> the assistant's text (from the journal when known). Raises JudgeError."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            },
            sort_keys=True,
        ).encode()
        key = hashlib.sha256(body).hexdigest()
        if self.journal is not None and (known := self.journal.get(key)) is not None:
            return known
        text = self._with_retries(body)
        if self.journal is not None:
            self.journal.put(key, text)
        return text

    def _with_retries(self, body: bytes) -> str:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                return self._attempt(body)
            except JudgeError as e:
                if not e.retryable:
                    raise JudgeError(f"judge {self.endpoint} {e}", retryable=False) from e
                last = str(e)
        raise JudgeError(f"judge {self.endpoint} failed after {self.retries + 1} attempts (last: {last})")

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(self.endpoint)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port, timeout=self.timeout), path

    def _attempt(self, body: bytes) -> str:
        """One request under the wall-clock deadline -> the assistant's text; every failure is a JudgeError."""
        conn, path = self._connection()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        late = f"gave no complete answer within the {self.timeout:g} s deadline"
        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            if expired.is_set():
                raise TimeoutError("deadline passed while connecting")
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            if resp.status != 200:
                retry = resp.status in RETRY_STATUS
                hint = "" if retry else ": check --judge-url/--judge-model and OPENAI_API_KEY"
                raise JudgeError(f"answered HTTP {resp.status} {resp.reason}{hint}", retryable=retry)
            data = _read_capped(resp, self.max_response_bytes)
        except (OSError, http.client.HTTPException, JudgeError) as e:
            # A socket timeout means one wait alone took `timeout` seconds, so the deadline has passed too: the
            # timer thread may simply not have run yet (a loaded machine).
            if expired.is_set() or isinstance(e, TimeoutError):
                raise JudgeError(late) from e
            if isinstance(e, JudgeError):
                raise
            raise JudgeError(f"{type(e).__name__}: {e}") from e
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():  # the shutdown can read as a normal end of headers or body
            raise JudgeError(late)
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JudgeError(f"answered non-JSON ({e}): {data[:80]!r}") from e
        return completion_text(payload)

    def map(self, fn: Callable, items: Sequence, on_result: Callable[[int, object], None]) -> None:
        """fn over items on `concurrency` threads; on_result(i, fn(items[i])) runs on this thread as each ends.

        On the first JudgeError the items not yet started are cancelled, the running ones end (each within
        `budget`) and still report, then the first error is raised.
        """
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        error: BaseException | None = None
        try:
            pending = {pool.submit(fn, x): i for i, x in enumerate(items)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    i = pending.pop(fut)
                    if fut.cancelled():
                        continue
                    if fut.exception() is not None:
                        if error is None:
                            error = fut.exception()
                            for other in pending:
                                other.cancel()
                        continue
                    on_result(i, fut.result())
        finally:  # an interrupt (Ctrl-C) cancels what has not started, too
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
