"""The streaming pass against a naive reference that holds every activation in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeforge.interpret.collect import Batch, collect_stats
from saeforge.interpret.contexts import dedupe_windows, quantile_bands, top_contexts
from tests.interpret.helpers import identity_sae, planted_stream, relu_sae


def _naive(sae, batches, ids):
    x = torch.cat([b.activations for b in batches]).double()
    pos = torch.cat([b.positions for b in batches])
    with torch.no_grad():
        z = torch.relu((x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())[:, ids]
    return z, pos


def _random_stream(n_rows=900, d_in=10, batch=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, d_in, generator=g) * 2
    pos = torch.stack([torch.arange(n_rows) // 30, torch.arange(n_rows) % 30], 1)
    tok = torch.randint(0, 50, (n_rows,), generator=g)
    return [Batch(x[s : s + batch], tok[s : s + batch], pos[s : s + batch]) for s in range(0, n_rows, batch)]


def test_stats_match_naive_reference():
    sae = relu_sae(10, 24, seed=3)
    batches = _random_stream()
    ids = [0, 5, 7, 23]
    # A small chunk bound forces many merges of the running top-k, reservoirs and histograms.
    stats = collect_stats(sae, batches, ids, k=6, sample_size=50, hist_bins=16, max_chunk_elems=4 * 37)
    z, pos = _naive(sae, batches, ids)
    for j, s in enumerate(stats):
        col = z[:, j]
        assert s.n_rows == z.shape[0]
        assert s.n_active == int((col > 0).sum())
        assert s.sum_active == pytest.approx(float(col.sum()), rel=1e-5)
        order = col.argsort(descending=True)[:12]
        assert [h.activation for h in s.top] == pytest.approx(col[order].tolist(), rel=1e-5)
        assert {(h.seq, h.pos) for h in s.top} == {tuple(p) for p in pos[order].tolist()}
        # Histogram: same counts as numpy on the final range (hi a power of two above the max).
        active = col[col > 0].numpy()
        assert s.histogram.hi > active.max() and np.log2(s.histogram.hi) == int(np.log2(s.histogram.hi))
        ref, _ = np.histogram(active, bins=16, range=(0, s.histogram.hi))
        assert s.histogram.counts == ref.tolist()
        # Reservoirs: distinct rows, values that are the true activations there, right side of zero.
        lookup = {tuple(p): float(v) for p, v in zip(pos.tolist(), col.tolist(), strict=True)}
        assert len(s.active_sample) == min(50, s.n_active)
        assert len({(h.seq, h.pos) for h in s.active_sample}) == len(s.active_sample)
        for h in s.active_sample:
            assert h.activation == pytest.approx(lookup[(h.seq, h.pos)], rel=1e-5) and h.activation > 0
        assert all(lookup[(h.seq, h.pos)] == 0 for h in s.inactive_sample)


def test_reservoir_is_uniform_over_active_rows():
    """Each active row is kept with probability sample_size / n_active (checked over seeds)."""
    d = 4
    x = torch.zeros(200, d)
    x[::2, 0] = torch.linspace(0.1, 5, 100)
    pos = torch.stack([torch.arange(200), torch.zeros(200, dtype=torch.long)], 1)
    batches = [
        Batch(x[s : s + 37], torch.zeros(37 if s + 37 <= 200 else 200 - s, dtype=torch.long), pos[s : s + 37])
        for s in range(0, 200, 37)
    ]
    hits = torch.zeros(200)
    n_seeds = 300
    for seed in range(n_seeds):
        (s,) = collect_stats(identity_sae(d), batches, [0], k=1, sample_size=10, seed=seed)
        for h in s.active_sample:
            hits[h.seq] += 1
    assert hits[1::2].sum() == 0
    rate = hits[::2] / n_seeds
    # Expected 0.1 each; first and second half of the stream must not differ (no recency bias).
    assert abs(rate.mean().item() - 0.1) < 1e-6
    assert abs(rate[:50].mean().item() - rate[50:].mean().item()) < 0.03


def test_histogram_growth_is_exact_when_range_jumps():
    """Tiny values first, then a value 2^20 larger: counts equal a histogram on the final range."""
    vals = torch.tensor([1e-4, 3e-4, 2e-4, 0.5, 7.0, 100.0, 3.0, 60.0])
    x = vals.unsqueeze(1)
    pos = torch.stack([torch.arange(8), torch.zeros(8, dtype=torch.long)], 1)
    batches = [Batch(x[i : i + 2], torch.zeros(2, dtype=torch.long), pos[i : i + 2]) for i in range(0, 8, 2)]
    (s,) = collect_stats(identity_sae(1), batches, [0], k=2, hist_bins=8)
    assert s.histogram.hi == 128.0
    ref, _ = np.histogram(vals.numpy(), bins=8, range=(0, 128))
    assert s.histogram.counts == ref.tolist()


def test_dedupe_and_quantile_bands():
    from saeforge.interpret.collect import RowHit

    hits = [RowHit(0, 10, 5.0), RowHit(0, 12, 4.0), RowHit(1, 10, 3.0), RowHit(0, 40, 2.0)]
    assert [(h.seq, h.pos) for h in dedupe_windows(hits, 3, before=3, after=1)] == [(0, 10), (1, 10), (0, 40)]
    sample = [RowHit(0, i, float(i)) for i in range(20)]
    picked, bands, edges = quantile_bands(sample, n_bands=4, per_band=2)
    assert bands == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [h.activation for h in picked] == [0, 2, 5, 7, 10, 12, 15, 17]
    assert edges == [0, 5, 10, 15, 19]


def test_top_contexts_windows_match_planted_tokens():
    batches, tokens = planted_stream()
    sae = identity_sae(8)
    recs = top_contexts(
        sae, batches, [2, 5], k=4, before=3, after=2, n_negatives=5, tokens_of=lambda s: tokens[s]
    )
    for rec, latent in zip(recs, [2, 5], strict=True):
        assert rec.latent == latent and len(rec.top) == 4
        assert rec.density == pytest.approx(float((tokens == latent).float().mean()))
        for c in rec.top + rec.quantiles:
            assert c.token_ids == tokens[c.seq, c.start : c.start + len(c.token_ids)].tolist()
            assert c.token_ids[c.center] == latent
            # Every token of the window got its activation: > 0 exactly on the planted token.
            assert [a > 0 for a in c.acts] == [t == latent for t in c.token_ids]
            assert c.acts[c.center] == pytest.approx(c.activation)
        acts = [c.activation for c in rec.top]
        assert acts == sorted(acts, reverse=True)
        assert len(rec.negatives) == 5
        for c in rec.negatives:
            assert latent not in c.token_ids and all(a == 0 for a in c.acts)
        bands = [c.band for c in rec.quantiles]
        assert bands == sorted(bands) and len(set(bands)) == 5


def test_errors_name_the_problem():
    batches, _ = planted_stream()
    with pytest.raises(ValueError, match="d_sae=8"):
        top_contexts(identity_sae(8), batches, [8])
    with pytest.raises(ValueError, match="d_in"):
        top_contexts(identity_sae(4), batches, [0])
    with pytest.raises(TypeError, match="re-iterable"):
        top_contexts(identity_sae(8), iter(batches), [0])


def test_windows_with_rows_missing_from_the_stream():
    """Rows at position < 3 are not stored (like BOS): with the contexts they show their tokens with no
    activation; without them the window starts at the first stored row."""
    batches, tokens = planted_stream(n_seq=40, ctx=12)
    kept = [Batch(*(t[b.positions[:, 1] >= 3] for t in b)) for b in batches]
    sae = identity_sae(8)
    with_ctx = top_contexts(sae, kept, [4], k=30, before=6, after=1, tokens_of=lambda s: tokens[s])[0]
    without = top_contexts(sae, kept, [4], k=30, before=6, after=1)[0]
    assert [(c.seq, c.pos) for c in with_ctx.top] == [(c.seq, c.pos) for c in without.top]
    early = [(a, b) for a, b in zip(with_ctx.top, without.top, strict=True) if a.pos < 9]
    assert early, "some windows reach the unstored positions"
    for a, b in early:
        assert a.start == max(0, a.pos - 6) and b.start == max(3, b.pos - 6)
        assert a.token_ids == tokens[a.seq, a.start : a.pos + 2].tolist()
        assert all((p < 3) == (v is None) for p, v in zip(range(a.start, a.pos + 2), a.acts, strict=True))
        assert b.token_ids == a.token_ids[b.start - a.start :] and None not in b.acts


def test_tokenizer_decode_restores_word_boundaries_for_wordpiece(tiny_wordpiece_dir):
    from transformers import AutoTokenizer

    from saeforge.interpret.contexts import tokenizer_decode

    tok = AutoTokenizer.from_pretrained(str(tiny_wordpiece_dir), local_files_only=True)
    text = "the garbage collector understands references"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(ids)), "test text must split into pieces"
    pieces = tokenizer_decode(tok)(ids)
    assert "".join(pieces).strip() == tok.decode(ids)
    assert not any("##" in p for p in pieces)


def test_tokenizer_decode_byte_level_bpe_joins_to_the_text(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from saeforge.interpret.contexts import tokenizer_decode

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir), local_files_only=True)
    text = "the garbage collector understands references"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert "".join(tokenizer_decode(tok)(ids)) == tok.decode(ids)
