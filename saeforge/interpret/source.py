"""Reading an activation store as the (activations, token_ids, positions) batches interpretation consumes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from saeforge.activations.store import ActivationStore
from saeforge.interpret.collect import Batch
from saeforge.interpret.contexts import tokenizer_decode, top_contexts
from saeforge.interpret.records import LatentRecord
from saeforge.sae.base import SAE


class StoreBatches:
    """A re-iterable view of a store: each iteration yields `Batch`es of at most `rows` rows, in store order.

    Rows are read from the shards' memory maps chunk by chunk (float32), so memory stays at one chunk.
    """

    def __init__(self, store: ActivationStore, rows: int = 8192):
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        first = store.shard(0) if store.num_shards else {}
        missing = [k for k in ("token_ids", "positions") if k not in first]
        if missing:
            raise ValueError(
                f"the store at {store.path} has no {' / '.join(missing)} per row: interpretation needs them to "
                "show contexts; capture with `saeforge capture` (which writes them)"
            )
        self.store = store
        self.rows = rows

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self.store.num_shards):
            sh = self.store.shard(i)
            acts, tok, pos = sh["activations"], sh["token_ids"], sh["positions"]
            for s in range(0, acts.shape[0], self.rows):
                yield Batch(
                    acts[s : s + self.rows].to(torch.float32),
                    tok[s : s + self.rows].to(torch.long),
                    pos[s : s + self.rows].to(torch.long),
                )


def store_batches(store: ActivationStore, rows: int = 8192) -> StoreBatches:
    """`top_contexts(sae, store_batches(store), ids, tokens_of=store.context)` is all a store takes."""
    return StoreBatches(store, rows)


def store_top_contexts(
    sae: SAE,
    store: ActivationStore | str | Path,
    latent_ids: list[int],
    k: int = 10,
    tokenizer=None,
    **kwargs,
) -> list[LatentRecord]:
    """`top_contexts` over a store (an ActivationStore or its directory): its saved contexts fill the windows,
    `tokenizer` (a Hugging Face tokenizer) gives the token strings. kwargs go to `top_contexts`."""
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    decode = tokenizer_decode(tokenizer) if tokenizer is not None else None
    return top_contexts(
        sae, store_batches(store), latent_ids, k, tokens_of=store.context, decode=decode, **kwargs
    )
