"""The manifest cannot point outside its store and cannot be silently shortened; pointer files are contained;
a damaged manifest gives a message naming the file, not a traceback."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from saeforge.activations import shards as shards_mod
from saeforge.activations import store as store_mod
from saeforge.activations.loader import ActivationLoader
from saeforge.activations.manifest import MANIFEST, ManifestError, shards_digest
from saeforge.activations.store import ActivationStore, StoreError, UnsealedManifestWarning
from saeforge.activations.writer import write_store
from saeforge.eval import EvalConfig, run_eval
from saeforge.train.checkpoint import LATEST, latest_checkpoint, save_checkpoint


def _invoke(*args):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def store(tmp_path):
    """A saeforge store of 3 shards x 100 rows (d_in 8)."""
    write_store(
        tmp_path / "store", torch.randn(300, 8, generator=torch.Generator().manual_seed(0)), shard_rows=100
    )
    return tmp_path / "store"


def _edit(store, fn):
    m = json.loads((store / MANIFEST).read_text())
    fn(m)
    (store / MANIFEST).write_text(json.dumps(m))
    return m


@pytest.fixture
def opened(monkeypatch):
    """The files whose safetensors header was read (a refused entry must never be opened)."""
    seen = []
    real = shards_mod.read_header
    monkeypatch.setattr(store_mod, "read_header", lambda p: (seen.append(p.name), real(p))[1])
    return seen


def test_a_saeforge_manifest_records_rows_and_digest(store):
    m = json.loads((store / MANIFEST).read_text())
    assert m["format_version"] == 2 and m["total_rows"] == 300
    # independent reference: the digest is sha256 over one JSON line [path, rows, sha256] per shard
    import hashlib

    lines = b"".join(json.dumps([s["path"], s["rows"], s["sha256"]]).encode() + b"\n" for s in m["shards"])
    assert m["shards_digest"] == hashlib.sha256(lines).hexdigest()


@pytest.mark.parametrize(
    "bad", ["../outside.safetensors", "/etc/passwd", "./shard.safetensors", "a//b", "a\\b"]
)
def test_shard_paths_outside_or_unnormalised_are_refused_naming_the_entry(store, bad, opened):
    _edit(store, lambda m: m["shards"][1].update(path=bad))
    with pytest.raises(ManifestError, match=rf"shards\.1\.path: shard path {re.escape(repr(bad))}"):
        ActivationStore.open(store)
    assert opened == []
    result = _invoke("verify", store)
    assert result.exit_code == 1 and "shards.1.path" in result.output and "Traceback" not in result.output


def test_a_symlink_out_of_the_store_is_refused_without_opening_it(store, tmp_path, opened):
    outside = tmp_path / "elsewhere.safetensors"
    (store / "shard-000-000002.safetensors").rename(outside)
    (store / "shard-000-000002.safetensors").symlink_to(outside)
    with pytest.raises(StoreError, match=r"shard 2 \(shard-000-000002\.safetensors\) resolves to .*outside"):
        ActivationStore.open(store)
    assert opened == []
    result = _invoke("verify", store)
    assert result.exit_code == 1 and "outside the store" in result.output
    assert "elsewhere" not in " ".join(opened)


@pytest.mark.parametrize("edit", ["delete", "duplicate", "reorder", "total_rows"])
def test_a_shortened_or_reordered_shard_list_is_detected_by_every_reader(
    store, tmp_path, edit, acts, saes, store_tools
):
    if edit == "delete":  # the entry and its file: every remaining shard is intact
        m = _edit(store, lambda m: m["shards"].pop(1))
        (store / "shard-000-000001.safetensors").unlink()
    elif edit == "duplicate":
        _edit(store, lambda m: m["shards"].append(m["shards"][0]))
    elif edit == "reorder":
        _edit(store, lambda m: m["shards"].reverse())
    else:
        _edit(store, lambda m: m.update(total_rows=299))
    expect = {
        "delete": "shards_digest does not match",
        "duplicate": "listed twice",
        "reorder": "shards_digest",
    }
    pattern = expect.get(edit, "total_rows is 299 but the shards hold 300")
    with pytest.raises(StoreError, match=pattern):
        ActivationStore.open(store)
    sae = store_tools.save_sae(saes.random(8, 16), tmp_path / "sae")
    with pytest.raises(StoreError, match=pattern):
        run_eval(EvalConfig(saes=[sae], activations=store))
    result = _invoke("verify", store)
    assert result.exit_code == 1 and "BAD" in result.output
    if edit == "delete":
        assert m["total_rows"] == 300  # the manifest still claims the deleted rows


def test_an_unsealed_manifest_loads_with_a_warning_and_seal_adds_the_digest(store):
    _edit(store, lambda m: [m.pop(k) for k in ("total_rows", "shards_digest", "format_version")])
    with pytest.warns(UnsealedManifestWarning, match="no shards_digest.*verify --seal"):
        assert ActivationStore.open(store).num_rows == 300
    result = _invoke("verify", store)
    assert result.exit_code == 0 and "no shards_digest" in result.output
    # format version 2 without its digest: the fields were removed, refused
    _edit(store, lambda m: m.update(format_version=2))
    with pytest.raises(StoreError, match="no total_rows.*no shards_digest"):
        ActivationStore.open(store)
    _edit(store, lambda m: m.pop("format_version"))
    sealed = _invoke("verify", "--seal", store)
    assert sealed.exit_code == 0 and "sealed" in sealed.output, sealed.output
    m = json.loads((store / MANIFEST).read_text())
    assert m["shards_digest"] == shards_digest(ActivationStore.open(store).manifest.shards)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsealedManifestWarning)
        ActivationStore.open(store)
    _edit(store, lambda m: m["shards"].pop())
    with pytest.raises(StoreError, match="shards_digest does not match"):
        ActivationStore.open(store)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"d_in": 8, "shards": [', "is not valid JSON (Expecting value: line 1 column 24"),
        ("[1, 2]", "holds a JSON list, not a manifest object"),
        ('{"d_in": "x"}', "d_in: Input should be a valid integer"),
    ],
)
def test_a_damaged_manifest_names_the_file_and_the_error(store, text, detail):
    (store / MANIFEST).write_text(text)
    with pytest.raises(ManifestError, match=f"{store / MANIFEST}") as err:
        ActivationStore.open(store)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    assert detail in str(err.value)
    result = _invoke("verify", store)
    assert result.exit_code == 1 and str(store / MANIFEST) in result.output
    assert "Traceback" not in result.output
    spec = ["--architecture", "topk", "--k", "2", "--d-sae", "16", "--tokens", "128", "--batch-size", "64"]
    refused = _invoke("train", "--activations", store, *spec, "--out", store.parent / "t")
    assert refused.exit_code == 2 and str(store / MANIFEST) in refused.output, refused.output


def test_loader_reads_only_a_sound_store(store):
    _edit(store, lambda m: m["shards"].reverse())
    with pytest.raises(StoreError, match="shards_digest"):
        ActivationLoader(ActivationStore.open(store), batch_size=100)


@pytest.mark.parametrize(
    "pointer", ["../../elsewhere/step_000000001", "/tmp/step_000000001", "step_000000001/.."]
)
def test_checkpoints_latest_cannot_point_outside(tmp_path, pointer):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {"w": torch.zeros(2)}, {"step": 1}, keep=2)
    assert latest_checkpoint(root) == root / "step_000000001"
    (root / LATEST).write_text(pointer + "\n")
    with pytest.raises(ValueError, match=f"{root / LATEST} names .*not a checkpoint directory inside"):
        latest_checkpoint(root)


def test_a_symlinked_checkpoint_out_of_the_folder_is_not_used(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {"w": torch.zeros(2)}, {"step": 1}, keep=2)
    outside = tmp_path / "other" / "step_000000009"
    save_checkpoint(tmp_path / "other", 9, {"w": torch.ones(2)}, {"step": 9}, keep=2)
    (root / "step_000000009").symlink_to(outside)
    (root / LATEST).write_text("step_000000009\n")
    with pytest.raises(ValueError, match="not a checkpoint directory inside"):
        latest_checkpoint(root)
    (root / LATEST).unlink()
    assert latest_checkpoint(root) == root / "step_000000001"
