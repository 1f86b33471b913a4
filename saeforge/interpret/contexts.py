"""Token windows around chosen rows, with every window token's latent activation.

`top_contexts` is the entry point: one streaming pass for the statistics (`collect.collect_stats`), then a
second pass that reads back only the rows that fall inside the chosen windows (`fill_windows`), encoding only
those rows. Tokens missing from the stream (a store that skipped BOS, say) come from `tokens_of(seq)` when
given (a store's contexts), and have activation None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from saeforge.interpret.collect import (
    POS_BITS,
    Batch,
    LatentStats,
    RowHit,
    collect_stats,
    iter_chunks,
    latent_acts,
    pack_rows,
)
from saeforge.interpret.records import LatentRecord, TokenContext
from saeforge.sae.base import SAE

TokensOf = Callable[[int], "Tensor | None"]
Decode = Callable[[list[int]], list[str]]


def default_decode(ids: list[int]) -> list[str]:
    return [f"<{i}>" for i in ids]


def _wordpiece_prefix(tokenizer) -> str | None:
    """The continuing-subword prefix ("##") of a WordPiece tokenizer, None for other tokenizers."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(model).__name__ == "WordPiece":
        return model.continuing_subword_prefix
    return None


# WordPiece ids carry no spacing, and BERT's pre-tokenizer splits punctuation off words: these attach to the
# word before them, and the word after an opening bracket or an apostrophe attaches to it ("(gc)", "doesn't").
_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%'’")
_NO_SPACE_AFTER = frozenset("([{'’")


def tokenizer_decode(tokenizer) -> Decode:
    """Per-token display strings from a Hugging Face tokenizer, so that joining them reads like the text.

    Byte-level BPE: each id decoded alone (its leading space included). WordPiece (BERT): a word-initial piece
    gets a leading space and a continuation piece loses its "##"; punctuation attaches as in written text
    (`_NO_SPACE_BEFORE`, `_NO_SPACE_AFTER`); special tokens ([CLS], [SEP]) are returned as they are.
    """
    prefix = _wordpiece_prefix(tokenizer)
    special = set(tokenizer.all_special_tokens)

    def piece(i: int) -> str:
        raw = tokenizer.convert_ids_to_tokens(i)
        if raw in special:
            return raw
        return raw[len(prefix) :] if raw.startswith(prefix) else " " + raw

    def one(i: int) -> str:
        if i < 0:
            return "?"
        text = tokenizer.decode([i])
        if text and "\ufffd" not in text:
            return text
        # A byte fragment of a multi-byte character, or an id past the tokenizer's vocabulary.
        raw = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        return raw or f"<{i}>"

    def wordpiece(ids: list[int]) -> list[str]:
        out: list[str] = []
        for i in ids:
            p = piece(i) if 0 <= i < len(tokenizer) else one(i)
            prev = out[-1] if out else ""
            if p.startswith(" ") and (p[1:] in _NO_SPACE_BEFORE or prev.lstrip() in _NO_SPACE_AFTER):
                p = p[1:]
            out.append(p)
        return out

    def decode(ids: list[int]) -> list[str]:
        return wordpiece(ids) if prefix is not None else [one(i) for i in ids]

    return decode


def dedupe_windows(hits: Sequence[RowHit], k: int, before: int, after: int) -> list[RowHit]:
    """Keeps hits in order, skipping any whose window overlaps a kept one of the same sequence; at most k."""
    kept: list[RowHit] = []
    for h in hits:
        if all(h.seq != o.seq or abs(h.pos - o.pos) > before + after for o in kept):
            kept.append(h)
            if len(kept) == k:
                break
    return kept


def quantile_bands(
    sample: Sequence[RowHit], n_bands: int, per_band: int
) -> tuple[list[RowHit], list[int], list]:
    """Sample sorted by activation -> (per_band evenly spaced hits per equal-count band, their bands, edges).

    edges[b] is the lowest sampled activation of band b; edges[-1] the highest sampled activation.
    """
    n = len(sample)
    hits: list[RowHit] = []
    bands: list[int] = []
    edges: list[float] = []
    if n == 0:
        return hits, bands, edges
    for b in range(n_bands):
        lo, hi = b * n // n_bands, (b + 1) * n // n_bands
        if hi <= lo:
            continue
        edges.append(sample[lo].activation)
        m = min(per_band, hi - lo)
        for t in range(m):
            hits.append(sample[lo + (t * (hi - lo)) // m])
            bands.append(b)
    edges.append(sample[-1].activation)
    return hits, bands, edges


@torch.no_grad()
def fill_windows(
    sae: SAE,
    batches: Iterable[Batch],
    latent_ids: list[int],
    requests: list[tuple[int, RowHit]],
    *,
    before: int,
    after: int,
    tokens_of: TokensOf | None = None,
    max_chunk_elems: int = 1 << 24,
) -> list[tuple[int, list[int], list[float | None]]]:
    """Second pass: for each request (latent index j into latent_ids, centre row) -> (start, token_ids, acts).

    Only rows inside some window are encoded; rows find their window slots by binary search in the sorted
    slot keys, so each chunk costs O(rows log slots) whatever the number of windows. Window positions with no row and no `tokens_of` entry are trimmed at the ends and get token
    id -1 inside.
    """
    windows = []
    ctxs = []
    for _, h in requests:
        start = max(0, h.pos - before)
        end = h.pos + after + 1
        ctx = tokens_of(h.seq) if tokens_of is not None else None
        if ctx is not None:
            end = min(end, int(ctx.shape[0]))
        windows.append((start, end))
        ctxs.append(ctx)
    lengths = torch.tensor([e - s for s, e in windows], dtype=torch.long)
    n_slots = int(lengths.sum())
    tok_out = torch.full((n_slots,), -1, dtype=torch.long)
    act_out = torch.full((n_slots,), math.nan)
    if n_slots:
        req = torch.repeat_interleave(torch.arange(len(requests)), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        seq = torch.tensor([h.seq for _, h in requests], dtype=torch.long)
        start = torch.tensor([s for s, _ in windows], dtype=torch.long)
        slot_pos = start[req] + torch.arange(n_slots) - first[req]
        slot_key = (seq[req] << POS_BITS) | slot_pos
        slot_j = torch.tensor([j for j, _ in requests], dtype=torch.long)[req]
        order = slot_key.argsort()
        sorted_keys = slot_key[order]
        ids = torch.tensor(latent_ids, dtype=torch.long)
        max_rows = max(1, max_chunk_elems // max(len(latent_ids), sae.d_sae))
        for chunk in iter_chunks(batches, sae.d_in, max_rows):
            row_keys = pack_rows(chunk.positions)
            lo = torch.searchsorted(sorted_keys, row_keys)
            count = torch.searchsorted(sorted_keys, row_keys, right=True) - lo
            m = count > 0
            if not m.any():
                continue
            z = latent_acts(sae, chunk.activations[m], ids)
            count, lo = count[m], lo[m]
            # Every slot of every matched row: row r owns sorted slots lo[r] .. lo[r] + count[r] - 1.
            row = torch.repeat_interleave(torch.arange(count.shape[0]), count)
            within = torch.arange(row.shape[0]) - torch.repeat_interleave(
                torch.cumsum(count, 0) - count, count
            )
            slots = order[lo[row] + within]
            act_out[slots] = z[row, slot_j[slots]]
            tok_out[slots] = chunk.token_ids[m][row]
    out = []
    bounds = torch.cumsum(lengths, 0).tolist()
    all_tok = tok_out.tolist()
    all_act = [None if math.isnan(v) else v for v in act_out.tolist()]
    for r, (_, h) in enumerate(requests):
        start_r = windows[r][0]
        lo_slot = bounds[r] - (windows[r][1] - start_r)
        t = all_tok[lo_slot : bounds[r]]
        a = all_act[lo_slot : bounds[r]]
        ctx = ctxs[r]
        if ctx is not None:
            t = [int(ctx[start_r + i]) if v < 0 else v for i, v in enumerate(t)]
        lo, hi = 0, len(t)
        while lo < h.pos - start_r and t[lo] < 0:
            lo += 1
        while hi > h.pos - start_r + 1 and t[hi - 1] < 0:
            hi -= 1
        out.append((start_r + lo, t[lo:hi], a[lo:hi]))
    return out


def _is_reiterable(batches: object) -> bool:
    return iter(batches) is not batches  # type: ignore[call-overload]


def top_contexts(
    sae: SAE,
    batches: Iterable[Batch],
    latent_ids: list[int],
    k: int = 20,
    *,
    before: int = 12,
    after: int = 4,
    n_bands: int = 5,
    per_band: int = 4,
    n_negatives: int = 10,
    hist_bins: int = 64,
    sample_size: int = 100,
    tokens_of: TokensOf | None = None,
    decode: Decode | None = None,
    seed: int = 0,
) -> list[LatentRecord]:
    """Top activating contexts, quantile samples, negatives, density and histogram for each latent.

    sae: inference SAE. batches: a re-iterable source of `Batch(activations [rows, d_in], token_ids [rows],
    positions [rows, 2])` (a list, an `ActivationStore` via `store_batches`); it is read twice (statistics, then
    only the window rows). latent_ids: latents to describe. k: top contexts per latent. before / after: window
    tokens on each side of the centre row. tokens_of: seq -> token ids [context_size] (a store's contexts), used
    for tokens the stream lacks. decode: token ids -> display strings.
    """
    if not _is_reiterable(batches):
        raise TypeError(
            "top_contexts reads the activations twice: pass a list of batches or a re-iterable source "
            "(e.g. saeforge.interpret.store_batches(store)), not a one-shot iterator"
        )
    decode = decode or default_decode
    stats = collect_stats(
        sae,
        batches,
        latent_ids,
        k,
        sample_size=max(sample_size, n_bands * per_band),
        inactive_size=3 * n_negatives,
        hist_bins=hist_bins,
        seed=seed,
    )
    plans = []
    requests: list[tuple[int, RowHit]] = []
    for j, s in enumerate(stats):
        top = dedupe_windows(s.top, k, before, after)
        q_hits, q_bands, q_edges = quantile_bands(s.active_sample, n_bands, per_band)
        plans.append((top, q_hits, q_bands, q_edges, s.inactive_sample))
        requests += [(j, h) for h in (*top, *q_hits, *s.inactive_sample)]
    filled = iter(
        fill_windows(sae, batches, latent_ids, requests, before=before, after=after, tokens_of=tokens_of)
    )

    def ctx(h: RowHit, band: int | None = None) -> TokenContext:
        start, tok, acts = next(filled)
        return TokenContext(h.seq, h.pos, h.activation, start, tok, decode(tok), acts, band)

    records = []
    for s, (top, q_hits, q_bands, q_edges, inactive) in zip(stats, plans, strict=True):
        top_ctx = [ctx(h) for h in top]
        q_ctx = [ctx(h, b) for h, b in zip(q_hits, q_bands, strict=True)]
        neg_ctx = [ctx(h) for h in inactive]
        negatives = [c for c in neg_ctx if all(a is None or a <= 0 for a in c.acts)][:n_negatives]
        records.append(_record(s, top_ctx, q_ctx, negatives, q_edges))
    return records


def _record(
    s: LatentStats,
    top: list[TokenContext],
    quantiles: list[TokenContext],
    negatives: list[TokenContext],
    edges: list[float],
) -> LatentRecord:
    return LatentRecord(
        latent=s.latent,
        density=s.density,
        n_active=s.n_active,
        n_rows=s.n_rows,
        max_activation=s.max_activation,
        mean_activation=s.mean_active,
        hist_hi=s.histogram.hi,
        hist_counts=s.histogram.counts,
        quantile_edges=edges,
        top=top,
        quantiles=quantiles,
        negatives=negatives,
    )
