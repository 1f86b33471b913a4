"""Every read is a verified read: a shard whose bytes differ from its manifest sha256 is never used by eval,
interpret, train or the loader; a second read does not hash again; a store without sha256 needs --no-verify."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations import store as store_mod
from saeforge.activations.loader import ActivationLoader
from saeforge.activations.manifest import MANIFEST, Manifest, shards_digest
from saeforge.activations.shards import ShardError
from saeforge.activations.store import ActivationStore, StoreError
from saeforge.activations.writer import write_store
from saeforge.eval import EvalConfig, run_eval
from saeforge.train import ConfigError, TrainConfig, train


def _invoke(*args):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def damaged(tmp_path, acts, store_tools, saes, request):
    """(store dir, SAE dir, name of the damaged shard) for damage in {"flip", "edited_sha"}."""
    n = 600
    pos = torch.stack([torch.arange(n) // 20, torch.arange(n) % 20], dim=1)
    store = tmp_path / "store"
    write_store(
        store,
        acts(n, 8),
        hook="layers.0.resid_post",
        shard_rows=200,
        token_ids=torch.arange(n) % 50,
        positions=pos,
    )
    sae = store_tools.save_sae(saes.random(8, 16), tmp_path / "sae")
    manifest = json.loads((store / MANIFEST).read_text())
    name = manifest["shards"][1]["path"]
    if request.param == "flip":
        data = bytearray((store / name).read_bytes())
        data[-7] ^= 0x10  # same size, one bit inside the activations: headers still match
        (store / name).write_bytes(bytes(data))
    else:
        # edited consistently (shards_digest recomputed), so only the shard's own hash can tell
        manifest["shards"][1]["sha256"] = "0" * 64
        manifest["shards_digest"] = shards_digest(Manifest.model_validate(manifest).shards)
        (store / MANIFEST).write_text(json.dumps(manifest))
    return store, sae, name


@pytest.mark.parametrize("damaged", ["flip", "edited_sha"], indirect=True)
def test_no_reader_uses_a_damaged_shard(damaged, tmp_path):
    store, sae, name = damaged
    with pytest.raises(ShardError, match=f"{name}.*differ from the manifest's sha256"):
        run_eval(EvalConfig(saes=[sae], activations=store))
    with pytest.raises(ShardError, match=name):
        ActivationLoader(ActivationStore.open(store), batch_size=100)
    with pytest.raises(ConfigError, match=name):
        train(TrainConfig(activations=store, tokens=200, batch_size=100, out=tmp_path / "t", saes=[{"name": "t", "architecture": "topk", "k": 2, "d_sae": 16}]))  # fmt: skip
    result = _invoke(
        "interpret", "--sae", sae, "--activations", store, "--latents", 2, "--out", tmp_path / "i"
    )
    assert result.exit_code != 0 and name in result.output, result.output
    assert not (tmp_path / "i" / "latents.json").exists()
    bad = ActivationStore.open(store).verify()
    assert len(bad) == 1 and name in bad[0]


def test_each_shard_is_hashed_once_per_process(tmp_path, acts, store_tools, monkeypatch):
    store = store_tools.write_store(tmp_path / "store", acts(600, 8), rows_per_shard=200)
    store_mod._VERIFIED.clear()
    hashed = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda p: (hashed.append(p.name), real(p))[1])
    for _ in range(2):
        s = ActivationStore.open(store)
        assert not hashed or len(hashed) == 3  # nothing is hashed by open itself
        first = torch.cat(list(s.iter_batches(128)))
        again = torch.cat(list(s.iter_batches(128)))
        assert torch.equal(first, again) and first.shape == (600, 8)
    assert sorted(hashed) == sorted(p["path"] for p in json.loads((store / MANIFEST).read_text())["shards"])
    # a shard rewritten in place is a new file version: it is hashed again, and refused if it differs
    path = store / hashed[0]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=hashed[0]):
        list(ActivationStore.open(store).iter_batches(128))


def test_store_without_checksums_loads_only_with_no_verify(tmp_path, acts, store_tools, saes):
    store = store_tools.write_store(tmp_path / "store", acts(256, 8), sha256=False)
    sae = store_tools.save_sae(saes.random(8, 16), tmp_path / "sae")
    with pytest.raises(StoreError, match="list no sha256.*--no-verify"):
        ActivationStore.open(store)
    refused = _invoke("eval", "--sae", sae, "--activations", store, "--out", tmp_path / "e")
    assert refused.exit_code == 1 and "--no-verify" in refused.output
    ok = _invoke("eval", "--sae", sae, "--activations", store, "--out", tmp_path / "e", "--no-verify")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "e" / "sae" / "metrics.json").read_text())["activations_verified"] is False
    spec = ["--architecture", "topk", "--k", "2", "--d-sae", "16", "--tokens", "128", "--batch-size", "64"]
    refused = _invoke("train", "--activations", store, *spec, "--out", tmp_path / "t")
    assert refused.exit_code == 2 and "--no-verify" in refused.output
    ok = _invoke("train", "--activations", store, *spec, "--out", tmp_path / "t", "--no-verify")
    assert ok.exit_code == 0, ok.output
    card = json.loads((tmp_path / "t" / "topk" / "cfg.json").read_text())
    assert card["metadata"]["data"]["verified"] is False
