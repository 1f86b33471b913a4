"""Store format: shards round-trip, headers are checked on open, verify finds every corrupted shard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saeforge.activations.manifest import MANIFEST
from saeforge.activations.shards import ShardError
from saeforge.activations.store import ActivationStore, StoreError
from saeforge.activations.writer import write_store


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_roundtrip_memmap_matches_safetensors(tmp_path, dtype):
    x = torch.randn(50, 12)
    store = write_store(tmp_path / "s", x, hook="h", dtype=dtype, shard_rows=16)
    assert (store.d_in, store.num_rows, store.num_shards, store.hook) == (12, 50, 4, "h")
    got = torch.cat([store.shard(i)["activations"] for i in range(store.num_shards)])
    assert got.dtype == store.dtype
    assert torch.equal(got, x.to(store.dtype))
    # Our writer's files are ordinary safetensors files.
    ref = load_file(store.shard_path(1))
    assert torch.equal(ref["activations"], store.shard(1)["activations"])
    seq = torch.cat(list(store.iter_batches(7)))
    assert torch.equal(seq, x.to(store.dtype).float())


def test_stats_match_float64(tmp_path):
    x = torch.randn(300, 8) * 3 + 1
    store = write_store(tmp_path / "s", x, shard_rows=64)
    x64 = x.double()
    assert store.stats.count == 300
    assert torch.allclose(torch.tensor(store.stats.mean, dtype=torch.float64), x64.mean(0), atol=1e-12)
    assert store.stats.mean_sq_norm == pytest.approx(float((x64**2).sum(1).mean()), rel=1e-12)
    assert store.stats.mean_norm == pytest.approx(float(x64.norm(dim=1).mean()), rel=1e-12)


def test_foreign_minimal_store_loads(tmp_path):
    """Another tool's store: only d_in/dtype/hook/shards, shards with only `activations`."""
    root = tmp_path / "foreign"
    root.mkdir()
    x = torch.randn(40, 6)
    save_file({"activations": x[:25].contiguous()}, root / "a.safetensors")
    save_file({"activations": x[25:].contiguous()}, root / "b.safetensors")
    manifest = {
        "d_in": 6,
        "dtype": "float32",
        "hook": "blocks.0.hook_resid_post",
        "shards": [
            {"path": "a.safetensors", "rows": 25, "sha256": None},
            {"path": "b.safetensors", "rows": 15},
        ],
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="list no sha256.*--no-verify"):
        ActivationStore.open(root)
    store = ActivationStore.open(root, verify="off")
    assert store.num_rows == 40 and store.stats is None and store.context(0) is None
    assert torch.equal(torch.cat(list(store.iter_batches(16))), x)
    from saeforge.activations.loader import ActivationLoader

    loader = ActivationLoader(store, batch_size=8)
    expected = 6**0.5 / float(x.double().norm(dim=1).mean())
    assert loader.activation_scale == pytest.approx(expected, rel=1e-9)
    assert next(loader).shape == (8, 6)


def test_open_checks_headers(tmp_path):
    store = write_store(tmp_path / "s", torch.randn(30, 4), shard_rows=10)
    manifest = json.loads((store.path / MANIFEST).read_text())
    manifest["shards"][1]["rows"] = 11
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="shard-000-000001.*\\[10, 4\\].*\\[11, 4\\]"):
        ActivationStore.open(store.path)
    manifest["shards"][1]["rows"] = 10
    manifest["d_in"] = 5
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="d_in"):
        ActivationStore.open(store.path)
    manifest["d_in"] = 4
    manifest["dtype"] = "float16"
    (store.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="F32.*float16"):
        ActivationStore.open(store.path)


def test_truncated_shard_fails_open(tmp_path):
    store = write_store(tmp_path / "s", torch.randn(30, 4), shard_rows=10)
    path = store.shard_path(2)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(ShardError, match="truncated"):
        ActivationStore.open(store.path)


def test_verify_names_each_corrupted_shard(tmp_path):
    store = write_store(tmp_path / "s", torch.randn(40, 4), shard_rows=10)
    assert store.verify() == []
    for i in (1, 3):
        path = store.shard_path(i)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # same size, one flipped byte inside the activations
        path.write_bytes(bytes(data))
    bad = ActivationStore.open(store.path).verify()
    assert len(bad) == 2
    assert "shard-000-000001" in bad[0] and "shard-000-000003" in bad[1] and "sha256" in bad[0]
    with pytest.raises(StoreError, match="shard-000-000001.*shard-000-000003"):
        ActivationStore.open(store.path, verify="now")


def test_open_output_dir_with_one_or_several_stores(tmp_path):
    write_store(tmp_path / "out" / "layers.0.resid_post", torch.randn(5, 3), hook="layers.0.resid_post")
    assert ActivationStore.open(tmp_path / "out").hook == "layers.0.resid_post"
    write_store(tmp_path / "out" / "layers.1.resid_post", torch.randn(5, 3), hook="layers.1.resid_post")
    with pytest.raises(StoreError, match="2 stores.*layers.0.resid_post.*layers.1.resid_post"):
        ActivationStore.open(tmp_path / "out")
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "nope")
