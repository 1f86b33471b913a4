"""AlignedLoader and check_aligned: same rows from every store, one shuffle, exact resume, refusing strangers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saeforge.activations import (
    ActivationLoader,
    ActivationStore,
    AlignedLoader,
    CaptureConfig,
    StoreError,
    capture,
    check_aligned,
    write_store,
)


def _keyed_store(path: Path, d: int, shard_rows: int, n: int = 600, scale: float = 1.0, tokens=None):
    """Row i holds scale * i in every coordinate, token id 1000 + i, position (i // 10, i % 10)."""
    rows = torch.arange(n, dtype=torch.float32)
    tok = torch.arange(n) + 1000 if tokens is None else tokens
    pos = torch.stack([torch.arange(n) // 10, torch.arange(n) % 10], dim=1)
    x = (scale * rows)[:, None].expand(n, d).contiguous()
    return write_store(path, x, shard_rows=shard_rows, token_ids=tok, positions=pos)


def test_batches_are_aligned_and_shuffled_like_one_store(tmp_path):
    # Different widths, shard sizes and scales: alignment must not depend on the shard layout.
    a = _keyed_store(tmp_path / "a", d=3, shard_rows=100)
    b = _keyed_store(tmp_path / "b", d=5, shard_rows=77, scale=-2.0)
    loader = AlignedLoader([a, b], batch_size=64, seed=4)
    single = ActivationLoader(a, batch_size=64, seed=4)
    seen = []
    for _ in range(2 * loader.batches_per_epoch):  # two epochs
        xa, xb = next(loader)
        assert xa.dtype == xb.dtype == torch.float32
        assert xa.shape == (64, 3) and xb.shape == (64, 5)
        torch.testing.assert_close(xb, -2.0 * xa[:, :1].expand(64, 5), rtol=0, atol=0)
        assert torch.equal(xa, next(single))  # the same global shuffle as the single-store loader
        seen.append(xa[:, 0].long().tolist())
    per_epoch = loader.batches_per_epoch
    assert len(set(sum(seen[:per_epoch], []))) == per_epoch * 64
    assert seen[:per_epoch] != seen[per_epoch:]
    sources = loader.last_source()
    assert [len(sum((r for _, r in src), [])) for src in sources] == [64, 64]
    assert Path(sources[1][0][0]).parent == b.path


def test_rank_slices_partition_the_aligned_global_batch(tmp_path):
    a = _keyed_store(tmp_path / "a", d=2, shard_rows=128)
    b = _keyed_store(tmp_path / "b", d=2, shard_rows=50, scale=3.0)
    full = AlignedLoader([a, b], batch_size=60, seed=1)
    ranks = [AlignedLoader([a, b], batch_size=60, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(5):
        parts = [next(r) for r in ranks]
        fa, fb = next(full)
        assert all(p[0].shape == (20, 2) for p in parts)
        assert sorted(torch.cat([p[0] for p in parts])[:, 0].tolist()) == sorted(fa[:, 0].tolist())
        for pa, pb in parts:
            assert torch.equal(pb, 3.0 * pa)


def test_resume_is_bit_identical_and_scales_are_per_store(tmp_path):
    a = _keyed_store(tmp_path / "a", d=4, shard_rows=90)
    b = _keyed_store(tmp_path / "b", d=6, shard_rows=200, scale=0.5)
    ref = AlignedLoader([a, b], batch_size=50, seed=7)
    expected = [next(ref) for _ in range(30)]  # 12 batches per epoch: crosses two epoch ends
    for cut in (0, 5, 12, 17):
        first = AlignedLoader([a, b], batch_size=50, seed=7)
        for _ in range(cut):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = AlignedLoader([a, b], batch_size=50, seed=7)
        resumed.load_state_dict(state)
        for want in expected[cut:]:
            got = next(resumed)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="seed"):
        AlignedLoader([a, b], batch_size=50, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="over 2 stores"):
        AlignedLoader([a, b, a], batch_size=50, seed=7).load_state_dict(state)
    # Row i's norm is scale * i * sqrt(d); the mean over 0..599 is 299.5 * scale * sqrt(d).
    want = [np.sqrt(4) / (299.5 * np.sqrt(4)), np.sqrt(6) / (0.5 * 299.5 * np.sqrt(6))]
    np.testing.assert_allclose(ref.scales, want, rtol=1e-6)
    assert ref.d_ins == (4, 6)


def test_mismatched_tokens_row_counts_or_missing_keys_are_refused(tmp_path):
    a = _keyed_store(tmp_path / "a", d=2, shard_rows=100)
    tokens = torch.arange(600) + 1000
    tokens[250] = 7
    b = _keyed_store(tmp_path / "b", d=2, shard_rows=100, tokens=tokens)
    msg = (
        r"row 250 is token 7 at \(sequence 25, position 0\) in .*b \(shard shard-000-000002\.safetensors, "
        r"row 50\) but token 1250 at \(sequence 25, position 0\) in .*a \(shard .*, row 50\)"
    )
    with pytest.raises(StoreError, match=msg):
        check_aligned([a, b])
    with pytest.raises(StoreError, match="row 250"):
        AlignedLoader([a.path, b.path], batch_size=10)
    short = _keyed_store(tmp_path / "short", d=2, shard_rows=100, n=550)
    with pytest.raises(StoreError, match=r"holds 550 rows but .* holds 600 \(the first 550 agree\)"):
        check_aligned([a, short])
    bare = write_store(tmp_path / "bare", torch.zeros(600, 2), shard_rows=300)
    with pytest.raises(StoreError, match="has no token_ids or positions"):
        check_aligned([a, bare])
    with pytest.raises(StoreError, match="as many rows"):
        AlignedLoader([a, short], batch_size=10, check=False)


def test_hooks_of_one_capture_are_aligned_and_another_corpus_is_not(reference_capture, tmp_path):
    hooks = reference_capture.hooks
    stores = [ActivationStore.open(reference_capture.out / h) for h in hooks]
    assert [s.path.name for s in check_aligned(stores)] == hooks
    x0, x1 = next(AlignedLoader(stores, batch_size=128, seed=0))
    assert x0.shape == x1.shape == (128, stores[0].d_in) and not torch.equal(x0, x1)
    # The same number of rows from another corpus mix: refused at the first differing row.
    settings = reference_capture.model_dump()
    settings.update(data="builtin:heldout", out=tmp_path / "other", hooks=hooks[:1])
    capture(CaptureConfig(**settings))
    stranger = ActivationStore.open(tmp_path / "other" / hooks[0])
    assert stranger.num_rows == stores[0].num_rows
    with pytest.raises(
        StoreError, match=r"not captured together: row \d+ is token \d+ at \(sequence 0, position"
    ):
        check_aligned([stores[1], stranger])
