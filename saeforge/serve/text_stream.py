"""Incremental detokenisation with stop strings: the text a stream may show so far, never taken back.

Text that could still turn out to begin a stop string, or that ends in an incomplete UTF-8 sequence (the
tokenizer decodes it as U+FFFD), is held back until the next token decides it.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text newly safe to show. Sets `stopped` when a stop string appeared."""
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self.flush()
        self.text = text
        safe = len(text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        delta = text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return delta

    def flush(self) -> str:
        """Everything not shown yet (call at the end)."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta
