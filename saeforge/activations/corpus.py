"""The token stream a capture reads: a weighted mixture of corpora packed into contexts, cut at --tokens.

Contexts are numbered in stream order (the sequence ids stored with each row) and grouped into forward batches
of `batch_size` contexts on a fixed grid: batch b holds contexts [b * batch_size, (b + 1) * batch_size). Every
process reads the whole stream (tokenising is cheap next to the forward pass), so each knows the global cut and
the counts without talking to the others; process r of w runs the forward pass of batches b with b % w == r.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from saeforge.activations.manifest import CorpusCard
from saeforge.activations.paired import agreeing_texts


@dataclass
class ContextBatch:
    """One forward batch of the grid.

    tokens: LongTensor [n, context_size]; seq_ids: LongTensor [n]; nonspecial: BoolTensor [n, context_size]
    (False at special tokens when they are excluded); candidate: BoolTensor [n, context_size], the positions
    that become rows (non-special and inside the --tokens budget), in row-major order.
    """

    index: int
    tokens: torch.Tensor
    seq_ids: torch.Tensor
    nonspecial: torch.Tensor
    candidate: torch.Tensor


class ContextStream:
    """Iterates the grid of context batches of a mixture of sources until `tokens` candidate positions.

    With `base_tokenizer` (paired capture), every document is checked to tokenize the same with it
    (saeforge.activations.paired). After iteration: `seen` candidate tokens, `special_excluded`, per-source `cards` (contexts, tokens), and
    `exhausted` / `exhausted_source` when a source ran out before the budget was reached.
    """

    def __init__(
        self,
        sources: list[tuple[str, float]],
        tokenizer,
        context_size: int,
        tokens: int,
        batch_size: int,
        prepend_bos: bool = True,
        exclude_special: bool = True,
        seed: int = 0,
        base_tokenizer=None,
    ):
        self.sources = sources
        self.tokenizer = tokenizer
        self.base_tokenizer = base_tokenizer
        self.context_size = context_size
        self.tokens = tokens
        self.batch_size = batch_size
        self.prepend_bos = prepend_bos
        self.exclude_special = exclude_special
        self.seed = seed
        self.cards = [CorpusCard(source=s, weight=w) for s, w in sources]
        self.seen = 0
        self.special_excluded = 0
        self.exhausted = False
        self.exhausted_source: str | None = None

    def _contexts(self) -> Iterator[tuple[int, torch.Tensor]]:
        from saeforge.text import pack, read_texts

        def texts(src: str):
            docs = read_texts(src, tokenizer=self.tokenizer)
            if self.base_tokenizer is None:
                return docs
            return agreeing_texts(docs, self.tokenizer, self.base_tokenizer, src)

        streams = [
            pack(texts(src), self.tokenizer, self.context_size, self.prepend_bos) for src, _ in self.sources
        ]
        weights = np.array([w for _, w in self.sources], dtype=np.float64)
        rng = np.random.default_rng(self.seed)
        while True:
            k = int(rng.choice(len(streams), p=weights / weights.sum())) if len(streams) > 1 else 0
            ctx = next(streams[k], None)
            if ctx is None:
                self.exhausted, self.exhausted_source = True, self.sources[k][0]
                return
            yield k, ctx

    def __iter__(self) -> Iterator[ContextBatch]:
        from saeforge.text import special_token_mask

        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        seq = 0
        index = 0
        contexts = self._contexts()
        while self.seen < self.tokens:
            item = next(contexts, None)
            if item is None:
                break
            k, ctx = item
            special = special_token_mask(ctx, self.tokenizer)
            nonspecial = ~special if self.exclude_special else torch.ones_like(special)
            candidate = nonspecial.clone()
            count = int(candidate.sum())
            end = self.context_size
            if self.seen + count > self.tokens:
                where = candidate.nonzero()[:, 0]
                end = int(where[self.tokens - self.seen - 1]) + 1
                candidate[end:] = False
                count = self.tokens - self.seen
            self.seen += count
            if self.exclude_special:
                self.special_excluded += int(special[:end].sum())
            self.cards[k].contexts += 1
            self.cards[k].tokens += self.context_size
            pending.append((ctx, nonspecial, candidate))
            seq += 1
            if len(pending) == self.batch_size:
                yield self._batch(index, seq, pending)
                index += 1
                pending = []
        if pending:
            yield self._batch(index, seq, pending)

    @staticmethod
    def _batch(index: int, seq_end: int, items: list) -> ContextBatch:
        n = len(items)
        return ContextBatch(
            index=index,
            tokens=torch.stack([i[0] for i in items]),
            seq_ids=torch.arange(seq_end - n, seq_end, dtype=torch.int64),
            nonspecial=torch.stack([i[1] for i in items]),
            candidate=torch.stack([i[2] for i in items]),
        )
