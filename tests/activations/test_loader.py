"""ActivationLoader: determinism, global shuffle, exact resume, rank slices, never serving bad shards."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest
import torch

from saeforge.activations.loader import ActivationLoader
from saeforge.activations.store import ActivationStore, StoreError
from saeforge.activations.writer import write_store


@pytest.fixture
def store(tmp_path):
    # Row i holds the value i in every coordinate, so a batch tells exactly which rows it holds.
    n, d = 1000, 4
    x = torch.arange(n, dtype=torch.float32)[:, None].expand(n, d).contiguous()
    return write_store(tmp_path / "s", x, shard_rows=100)


def _ids(batch: torch.Tensor) -> list[int]:
    assert torch.equal(batch, batch[:, :1].expand_as(batch))
    return batch[:, 0].long().tolist()


def test_epoch_is_a_permutation_and_shuffle_is_global(store):
    loader = ActivationLoader(store, batch_size=100, seed=3)
    first = _ids(next(loader))
    # A batch mixes rows from many of the 10 shards (a within-shard shuffle would give one shard).
    assert len({i // 100 for i in first}) >= 6
    rest = [_ids(next(loader)) for _ in range(9)]
    seen = sorted(first + sum(rest, []))
    assert seen == list(range(1000))
    assert loader.state_dict()["epoch"] == 1
    # The next epoch is a different permutation.
    assert _ids(next(loader)) != first


def test_deterministic_from_seed(store):
    a = [_ids(b) for b in islice(ActivationLoader(store, 64, seed=1), 5)]
    b = [_ids(b) for b in islice(ActivationLoader(store, 64, seed=1), 5)]
    c = [_ids(b) for b in islice(ActivationLoader(store, 64, seed=2), 5)]
    assert a == b and a != c


def test_exact_resume_across_epochs(store):
    ref = ActivationLoader(store, batch_size=96, seed=5)
    expected = [_ids(next(ref)) for _ in range(25)]  # 10 batches per epoch: crosses two epoch ends
    for cut in (0, 7, 10, 13):
        first = ActivationLoader(store, batch_size=96, seed=5)
        for _ in range(cut):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = ActivationLoader(store, batch_size=96, seed=5)
        resumed.load_state_dict(state)
        assert [_ids(next(resumed)) for _ in range(25 - cut)] == expected[cut:]
    with pytest.raises(ValueError, match="seed"):
        ActivationLoader(store, batch_size=96, seed=6).load_state_dict(state)


def test_rank_slices_are_disjoint_and_cover_the_global_batch(store):
    full = ActivationLoader(store, batch_size=120, seed=9)
    ranks = [ActivationLoader(store, batch_size=120, seed=9, rank=r, world_size=3) for r in range(3)]
    for _ in range(12):
        parts = [_ids(next(r)) for r in ranks]
        assert all(len(p) == 40 for p in parts)
        assert sorted(sum(parts, [])) == sorted(_ids(next(full)))
        assert not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match="multiple of world_size"):
        ActivationLoader(store, batch_size=100, world_size=3)


def test_last_source_names_shards_and_rows(store):
    loader = ActivationLoader(store, batch_size=10, seed=0)
    ids = _ids(next(loader))
    src = loader.last_source()
    got = sorted(int(p.split("-")[-1].split(".")[0]) * 100 + r for p, rows in src for r in rows)
    assert got == sorted(ids)


def test_dtype_conversion(tmp_path):
    x = torch.randn(64, 8)
    store = write_store(tmp_path / "bf", x, dtype="bfloat16", shard_rows=20)
    batch = next(ActivationLoader(store, batch_size=64, seed=0, dtype=torch.float32))
    assert batch.dtype == torch.float32
    ref = x.to(torch.bfloat16).float()
    assert sorted(batch.sum(1).tolist()) == sorted(ref.sum(1).tolist())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_shard_is_never_served(store, damage):
    path = store.shard_path(4)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-1] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises((StoreError, ValueError), match="shard-000-000004"):
        reopened = ActivationStore.open(store.path)
        ActivationLoader(reopened, batch_size=10)


def test_scale_from_manifest_stats(store):
    x = np.arange(1000, dtype=np.float64)
    mean_norm = float(np.mean(np.abs(x) * 2.0))  # ||(i, i, i, i)|| = 2i
    assert ActivationLoader(store, 10).activation_scale == pytest.approx(2.0 / mean_norm, rel=1e-12)
