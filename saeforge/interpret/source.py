"""Reading activation stores as the (activations, token_ids, positions) batches interpretation consumes.

An SAE or a transcoder reads one store (a transcoder's is its input site: its latents, hence its top contexts,
come from what it reads). A crosscoder reads one store per site, captured together (`check_aligned`), stacked
row by row into [rows, n_sites, d_in].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from saeforge.activations.store import ActivationStore
from saeforge.hook_names import canonical_hook_name
from saeforge.interpret.collect import Batch
from saeforge.interpret.contexts import tokenizer_decode, top_contexts
from saeforge.interpret.records import LatentRecord
from saeforge.sae.base import SAE
from saeforge.sae.crosscoder import CrossCoder
from saeforge.sae.transcoder import Transcoder


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


class _Rows:
    """Takes exactly n rows at a time from a stream of [<=B, d] batches."""

    def __init__(self, batches: Iterator[torch.Tensor]):
        self.batches, self.buf = batches, torch.empty(0)

    def take(self, n: int) -> torch.Tensor:
        parts, have = [self.buf], self.buf.shape[0]
        while have < n:
            parts.append(next(self.batches))
            have += parts[-1].shape[0]
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        self.buf = rows[n:]
        return rows[:n]


class AlignedStoreBatches:
    """A re-iterable view of aligned stores (one per site): `Batch`es whose activations are the sites' rows
    stacked, [rows, n_sites, d_in]; token ids and positions come from the first store (equal in all of them)."""

    def __init__(self, stores: Sequence[ActivationStore], rows: int = 8192):
        self.first = StoreBatches(stores[0], rows)
        self.rest = list(stores[1:])
        self.rows = rows

    def __iter__(self) -> Iterator[Batch]:
        takers = [_Rows(s.iter_batches(self.rows)) for s in self.rest]
        for b in self.first:
            n = b.activations.shape[0]
            yield Batch(
                torch.stack([b.activations, *(t.take(n) for t in takers)], 1), b.token_ids, b.positions
            )


def store_batches(
    store: ActivationStore | Sequence[ActivationStore], rows: int = 8192
) -> StoreBatches | AlignedStoreBatches:
    """`top_contexts(sae, store_batches(store), ids, tokens_of=store.context)` is all a store takes; a list of
    aligned stores (a crosscoder's sites, in order) gives their rows stacked."""
    if isinstance(store, ActivationStore):
        return StoreBatches(store, rows)
    return StoreBatches(store[0], rows) if len(store) == 1 else AlignedStoreBatches(store, rows)


def check_stores(sae: SAE, stores: Sequence[ActivationStore]) -> None:
    """Refuses stores that are not what `sae` reads (count, width, hook), naming the fix. A crosscoder reads
    one store per site in `cfg.sites` order; an SAE or transcoder one store, of the site it reads."""
    cross = isinstance(sae, CrossCoder)
    name = "crosscoder" if cross else "transcoder" if isinstance(sae, Transcoder) else "SAE"
    want = list(sae.cfg.sites) if cross else [sae.cfg.metadata.get("hook_name")]
    fix = f"give one --activations store per site, in the order {want}" if cross else "give one store"
    if len(stores) != len(want):
        raise ValueError(
            f"{len(stores)} --activations stores given, but this {name} reads {len(want)}: {fix}"
        )
    for store in stores:
        if store.d_in != sae.d_in:
            raise ValueError(
                f"the store {store.path} has d_in={store.d_in} but the {name} reads d_in={sae.d_in}: use the "
                "store of the site it reads"
            )
    hooks = [canonical_hook_name(h) if h else None for h in want]
    held = [canonical_hook_name(s.hook) if s.hook else None for s in stores]
    comparable = None not in hooks and len(set(hooks)) == len(hooks) and set(held) <= set(hooks)
    if not (comparable or not cross) or all(
        not h or not s or h == s for h, s in zip(hooks, held, strict=True)
    ):
        return
    given = [s.hook for s in stores]
    if cross:
        raise ValueError(f"the crosscoder reads the sites {want}, but the stores given hold {given}: {fix}")
    reads = f"reads {want[0]!r}"
    if isinstance(sae, Transcoder):
        reads += f" and writes {sae.cfg.metadata.get('hook_name_out')!r}; its latents come from its input"
    raise ValueError(
        f"the {name} {reads}: give the store of {want[0]!r} (the store given holds {given[0]!r})"
    )


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
