"""Delphi and Neuronpedia exports, read back with small readers written from the formats' descriptions.

The readers use only safetensors' numpy loader, gzip and json, not saeforge: a Delphi cache is per-hookpoint
latent ranges `<start>_<end>.safetensors` holding `locations` [N, 3] (sequence, position, latent - start),
`activations` [N] and `tokens` [n_seq, ctx_len], plus a config.json; a Neuronpedia export is gzipped JSONL
tables features/, activations/, explanations/ keyed by (modelId, layer, index).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from saeforge.activations import ActivationStore, CaptureConfig, capture
from saeforge.export import export_delphi, export_neuronpedia
from saeforge.interpret.records import Interpretation, LatentRecord
from tests.eval.conftest import random_sae

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = CaptureConfig(
        model=str(tiny_model("gpt2")),
        hooks=[HOOK],
        data="builtin",
        tokens=600,
        out=tmp_path_factory.mktemp("acts"),
        context_size=24,
        batch_size=8,
    )
    return ActivationStore.open(capture(cfg)[HOOK])


def _direct(sae, store):
    """{(store sequence id, position): z [d_sae]} straight from the SAE over every stored row."""
    out = {}
    for i in range(store.num_shards):
        sh = store.shard(i)
        with torch.no_grad():
            z = sae.encode(sh["activations"].float())
        for (s, p), row in zip(sh["positions"].tolist(), z, strict=True):
            out[(s, p)] = row
    return out


def read_delphi(folder: Path) -> tuple[dict, dict[tuple[int, int, int], float], np.ndarray]:
    config = json.loads((folder / "config.json").read_text())
    acts, tokens = {}, None
    for f in sorted(folder.glob("*_*.safetensors")):
        start, end = map(int, f.stem.split("_"))
        data = load_file(str(f))
        assert data["locations"].shape[1] == 3 and len(data["locations"]) == len(data["activations"])
        assert data["locations"].dtype in (np.uint16, np.uint32) and data["activations"].dtype == np.float16
        assert (data["locations"][:, 2] <= end - start).all()
        tokens = data["tokens"] if tokens is None else tokens
        assert (data["tokens"] == tokens).all()
        for (s, p, latent), v in zip(data["locations"].tolist(), data["activations"].tolist(), strict=True):
            acts[(s, p, start + latent)] = v
    return config, acts, tokens


def test_delphi_cache_holds_every_nonzero_latent(store, tmp_path):
    sae = random_sae(store.d_in, 40, seed=3, hook=HOOK)
    folder = export_delphi(sae, store, tmp_path / "cache", n_splits=3)
    assert folder == tmp_path / "cache" / HOOK
    assert sorted(f.name for f in folder.glob("*.safetensors")) == [
        "0_12.safetensors",
        "13_25.safetensors",
        "26_39.safetensors",
    ]
    config, acts, tokens = read_delphi(folder)
    assert config["n_splits"] == 3 and config["cache_ctx_len"] == config["ctx_len"] == tokens.shape[1] == 24
    for key in ("dataset_repo", "dataset_split", "dataset_name", "dataset_column", "model_name"):
        assert isinstance(config[key], str), key  # what Delphi's LatentDataset reads
    direct = _direct(sae, store)
    seq_ids = sorted({s for s, _ in direct})
    assert tokens.shape[0] == len(seq_ids)
    # Each exported sequence row is one stored sequence: map it through its tokens and check every value.
    row_of = {}
    for s in seq_ids:
        ctx = store.context(s)
        matches = [r for r in range(tokens.shape[0]) if ctx is not None and (tokens[r] == ctx.numpy()).all()]
        row_of[s] = matches[0] if matches else None
    expected = {
        (row_of[s], p, j): float(v)
        for (s, p), z in direct.items()
        for j, v in enumerate(z.tolist())
        if v != 0
    }
    if None in row_of.values():  # no saved contexts: rows are numbered in store order
        row_of = {s: i for i, s in enumerate(dict.fromkeys(s for s, _ in direct))}
        expected = {
            (row_of[s], p, j): float(v)
            for (s, p), z in direct.items()
            for j, v in enumerate(z.tolist())
            if v != 0
        }
    assert set(acts) == set(expected) and len(acts) > 100
    for key, v in expected.items():
        assert acts[key] == pytest.approx(v, rel=2e-3, abs=1e-3)
    sh = store.shard(0)
    for (s, p), t in zip(sh["positions"].tolist(), sh["token_ids"].tolist(), strict=True):
        assert tokens[row_of[s], p] == t


# The columns Neuronpedia's converters (utils/neuronpedia-utils) write for each table.
NP_COLUMNS = {
    "features": {"modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector",
                 "vectorLabel", "hookName", "topkCosSimIndices", "topkCosSimValues", "neg_str", "neg_values",
                 "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
                 "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                 "decoder_weights_dist"},
    "activations": {"id", "tokens", "modelId", "layer", "index", "maxValue", "maxValueTokenIndex", "minValue",
                    "values", "creatorId", "createdAt", "dfaValues", "dfaTargetIndex", "dfaMaxValue",
                    "lossValues"},
    "explanations": {"id", "modelId", "layer", "index", "description", "authorId", "typeName",
                     "explanationModelName", "createdAt"},
    "source": {"modelId", "setName", "visibility", "id", "creatorId"},
    "sourceset": {"modelId", "name", "creatorId", "releaseName", "visibility"},
    "model": {"id", "displayName", "creatorId"},
    "release": {"name", "creatorName", "creatorId"},
}  # fmt: skip


def read_neuronpedia(root: Path) -> dict[str, list[dict]]:
    tables = {}
    for table in ("source", "sourceset", "model", "release"):
        tables[table] = [json.loads(line) for line in (root / f"{table}.jsonl").read_text().splitlines()]
    for table in ("features", "activations", "explanations"):
        rows = []
        for f in sorted((root / table).glob("batch-*.jsonl.gz")):
            rows += [json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines()]
        tables[table] = rows
    for table, rows in tables.items():
        for row in rows:
            assert NP_COLUMNS[table] <= set(row), (table, NP_COLUMNS[table] - set(row))
    return tables


def test_neuronpedia_tables_agree_with_the_sae(store, tmp_path):
    sae = random_sae(store.d_in, 24, seed=5, hook=HOOK)
    rec = LatentRecord(3, 0.1, 1, 10, 1.0, 1.0, 1.0, [], [], explanation="closing brackets")
    interp = Interpretation([rec], meta={"judge_model": "local-judge"})
    root = export_neuronpedia(
        sae,
        store,
        tmp_path / "np",
        "team-gpt2",
        "1-res-team",
        interpretation=interp,
        contexts_per_latent=3,
        batch_size=10,
    )
    tables = read_neuronpedia(root)
    assert len(list((root / "features").glob("*.jsonl.gz"))) == 3
    features = {f["index"]: f for f in tables["features"]}
    assert sorted(features, key=int) == [str(j) for j in range(24)]
    direct = _direct(sae, store)
    z = torch.stack(list(direct.values()))
    for j in range(24):
        f = features[str(j)]
        assert (f["modelId"], f["layer"], f["hookName"]) == ("team-gpt2", "1-res-team", HOOK)
        assert f["frac_nonzero"] == pytest.approx(float((z[:, j] != 0).float().mean()))
        assert f["maxActApprox"] == pytest.approx(float(z[:, j].max().clamp_min(0)), rel=1e-5)
        contexts = [a for a in tables["activations"] if a["index"] == str(j)]
        firing_sequences = {s for (s, _), row in direct.items() if row[j] > 0}
        assert len(contexts) == min(3, len(firing_sequences))
        for a in contexts:
            assert len(a["tokens"]) == len(a["values"]) == 24
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
        if contexts:
            assert max(a["maxValue"] for a in contexts) == pytest.approx(f["maxActApprox"], rel=1e-5)
            assert contexts[0]["maxValue"] >= contexts[-1]["maxValue"]
    (explanation,) = tables["explanations"]
    assert {k: explanation[k] for k in ("modelId", "layer", "index", "description", "explanationModelName")} == {
        "modelId": "team-gpt2", "layer": "1-res-team", "index": "3", "description": "closing brackets",
        "explanationModelName": "local-judge"}  # fmt: skip
    ids = [a["id"] for a in tables["activations"]] + [explanation["id"]]
    assert len(set(ids)) == len(ids)
    (source,) = tables["source"]
    (sourceset,) = tables["sourceset"]
    assert (source["id"], source["setName"], source["modelId"]) == ("1-res-team", "res-team", "team-gpt2")
    assert (sourceset["name"], tables["model"][0]["id"]) == ("res-team", "team-gpt2")
    with pytest.raises(ValueError, match="is not `<layer>-<set name>`"):
        export_neuronpedia(sae, store, tmp_path / "bad", "team-gpt2", "res team")


def test_cli_exports_both(store, tmp_path, cli, tiny_model):
    from saeforge.sae import save_sae
    from saeforge.sae.standard import StandardSAE

    sae = random_sae(store.d_in, 16, seed=1, hook=HOOK)
    std = StandardSAE(sae.cfg.model_copy(update={"architecture": "standard"}))
    std.load_state_dict(sae.state_dict())
    save_sae(std, tmp_path / "sae")
    cli(
        "export",
        "delphi",
        "--sae",
        tmp_path / "sae",
        "--activations",
        store.path,
        "--out",
        tmp_path / "d",
        "--n-splits",
        "2",
    )
    assert len(read_delphi(tmp_path / "d" / HOOK)[1]) > 0
    args = ["--activations", store.path, "--out", tmp_path / "n", "--model-id", "m", "--source-id", "1-res-s"]
    cli("export", "neuronpedia", "--sae", tmp_path / "sae", *args, "--model", tiny_model("gpt2"))
    tables = read_neuronpedia(tmp_path / "n")
    assert len(tables["features"]) == 16 and all(
        isinstance(t, str) for t in tables["activations"][0]["tokens"]
    )
    bad = cli(
        "export",
        "delphi",
        "--sae",
        tmp_path / "sae",
        "--activations",
        tmp_path,
        "--out",
        tmp_path / "x",
        check=False,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
