"""Layers across ranks (`distribute_hooks`): each rank trains only its hooks' SAEs, from its hooks' stores, and a
hook's result equals one-process training of that hook."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from _support import SyntheticSource
from safetensors.torch import load_file

from saeforge.activations.writer import write_store
from saeforge.errors import ConfigError
from saeforge.train import TrainConfig, train, train_hooks
from tests.conftest import cli_env

D_IN, B = 16, 64
HOOKS = ["layers.0.resid_post", "layers.1.resid_post"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    for seed, hook in enumerate(HOOKS):
        src = SyntheticSource(D_IN, B, seed=seed + 1)
        write_store(
            root / hook, torch.cat([src.global_batch(i) for i in range(12)]), hook=hook, shard_rows=256
        )
    return root


def _config(stores, out, **extra) -> dict:
    return dict(
        activations=[str(stores / h) for h in HOOKS], distribute_hooks=True, tokens=B * 6, batch_size=B,
        log_every=3, device="cpu", plots=False, out=str(out),
        saes=[dict(name="tk", architecture="topk", k=4, d_sae=48)], **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    """{hook: {sae name: weights}} of a plain one-process run of each hook."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for hook in HOOKS:
        cfg = _config(stores, root / hook)
        cfg.update(activations=[str(stores / hook)], distribute_hooks=False)
        out[hook] = {
            r.name: load_file(str(r.path / "sae_weights.safetensors")) for r in train(TrainConfig.parse(cfg))
        }
    return out


def _assert_same(weights_dir, want: dict) -> None:
    for name, ref in want.items():
        got = load_file(str(weights_dir / name / "sae_weights.safetensors"))
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-7)


def test_rank_1_trains_only_its_hook_and_never_opens_the_other_store(
    stores, reference, tmp_path, monkeypatch
):
    cfg = _config(stores, tmp_path / "run")
    cfg["activations"][0] = str(tmp_path / "missing" / HOOKS[0])  # rank 0's store: opening it would fail
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    results = train_hooks(TrainConfig.parse(cfg))
    assert list(results) == [HOOKS[1]] and [r.name for r in results[HOOKS[1]]] == ["tk"]
    _assert_same(tmp_path / "run" / HOOKS[1], reference[HOOKS[1]])
    assert not (tmp_path / "run" / HOOKS[0]).exists() and not (tmp_path / "run" / "placement.json").exists()
    card = json.loads((tmp_path / "run" / HOOKS[1] / "run_card.json").read_text())
    assert card["tk"]["training"]["world_size"] == 1


def test_distribute_hooks_errors_before_any_work(stores, tmp_path, monkeypatch):
    cfg = TrainConfig.parse(_config(stores, tmp_path / "run"))
    with pytest.raises(ConfigError, match="train_hooks"):
        train(cfg)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="leave ranks idle.*--nproc_per_node 2"):
        train_hooks(cfg)
    with pytest.raises(ConfigError, match="does not combine with crosscoder"):
        TrainConfig.parse(_config(stores, tmp_path / "x", crosscoder=True))
    same = _config(stores, tmp_path / "y")
    same["activations"] = [str(stores / HOOKS[0]), str(tmp_path / "other" / HOOKS[0])]
    with pytest.raises(ConfigError, match="share a folder name"):
        train_hooks(TrainConfig.parse(same))
    assert not (tmp_path / "run").exists() and not (tmp_path / "y").exists()


def test_torchrun_places_one_hook_per_rank_and_matches_one_process(stores, reference, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_config(stores, tmp_path / "two")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "saeforge", "train", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    placed = json.loads((tmp_path / "two" / "placement.json").read_text())
    assert placed == {HOOKS[0]: 0, HOOKS[1]: 1}
    assert f"{HOOKS[0]} (rank 0):" in proc.stdout and f"{HOOKS[1]} (rank 1):" in proc.stdout
    for hook in HOOKS:
        _assert_same(tmp_path / "two" / hook, reference[hook])
