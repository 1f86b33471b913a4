"""What both exports read from a store: sequences renumbered densely, their tokens, and latents per row."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from saeforge.activations.store import ActivationStore
from saeforge.interpret.source import store_batches
from saeforge.sae.base import SAE


class StoreSequences:
    """The store's sequences as rows 0..n-1 of a token table `tokens` [n_seq, ctx_len] (int64).

    A sequence's tokens come from the store's saved context when it has one, else from its rows (positions with
    no row, e.g. excluded special tokens, are 0). `index[store sequence id] = row of the table`.
    """

    def __init__(self, store: ActivationStore, rows: int = 8192):
        self.store, self.rows = store, rows
        seen: dict[int, int] = {}
        width = store.manifest.context_size or 0
        for b in store_batches(store, rows):
            for s in b.positions[:, 0].unique().tolist():
                seen.setdefault(int(s), len(seen))
            width = max(width, int(b.positions[:, 1].max()) + 1)
        self.index = seen
        self.tokens = torch.zeros(len(seen), width, dtype=torch.long)
        for b in store_batches(store, rows):
            seq = torch.tensor([seen[int(s)] for s in b.positions[:, 0].tolist()])
            self.tokens[seq, b.positions[:, 1]] = b.token_ids
        for s, i in seen.items():
            ctx = store.context(s)
            if ctx is not None:
                self.tokens[i, : ctx.numel()] = ctx.long()

    def latents(self, sae: SAE) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per chunk of rows: (seq [rows] table row, pos [rows], z [rows, d_sae] float32)."""
        p = sae.W_dec
        for b in store_batches(self.store, self.rows):
            seq = torch.tensor([self.index[int(s)] for s in b.positions[:, 0].tolist()], dtype=torch.long)
            with torch.no_grad():
                z = sae.encode(b.activations.to(p.device, p.dtype)).float().cpu()
            yield seq, b.positions[:, 1], z
