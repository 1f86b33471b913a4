"""Dynamic batching: one worker thread owns the model and runs whatever is queued as one batch.

Requests queue `Row`s (a request with n choices queues n rows). The worker takes the oldest queued job, then
every job already waiting (up to `max_batch_rows` rows, waiting at most `max_wait_s` for more to arrive), and
runs them as one batch to completion. Exclusive calls (embeddings) run alone between batches. Only the worker
touches the model, so steering hooks of one batch never meet another batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from saeforge.serve.backend import Backend
from saeforge.serve.rows import Row


class Batcher:
    def __init__(self, backend: Backend, max_batch_rows: int = 8, max_wait_s: float = 0.002):
        self.backend = backend
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="saeforge-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Lets queued work finish, then ends the worker (waits at most `timeout` seconds)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, rows: Sequence[Row]) -> None:
        """Queues rows for generation; their callbacks report progress from the worker thread."""
        self._queue.put(list(rows))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Runs fn() on the worker, alone; returns a Future of its result."""
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    def _work(self) -> None:
        pending = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is None:
                return
            if isinstance(item, tuple):
                fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)
                continue
            rows = item
            deadline = time.monotonic() + self.max_wait_s
            while len(rows) < self.max_batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if not isinstance(nxt, list) or len(rows) + len(nxt) > self.max_batch_rows:
                    pending = nxt
                    break
                rows = rows + nxt
            self._run(rows)

    def _run(self, rows: list[Row]) -> None:
        live = [r for r in rows if not r.cancelled.is_set()]
        for r in rows:
            if r.cancelled.is_set():
                r.on_error(RuntimeError("cancelled before it started"))
        if not live:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(live))
        try:
            self.backend.generate(live)
        except BaseException as e:  # noqa: BLE001 - every row's request reports it
            for r in live:
                r.on_error(e)
