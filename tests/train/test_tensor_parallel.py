"""Latent sharding (tensor_parallel) under torchrun with gloo: equivalence with one process, the sharded checkpoint
and SAE files, elastic resume on other rank layouts, and kill -9 of one rank while a checkpoint is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _support import SyntheticSource
from safetensors.torch import load_file

from saeforge.activations.writer import write_store
from saeforge.errors import ConfigError
from saeforge.sae import load_sae
from saeforge.train import TrainConfig, train
from saeforge.train.checkpoint import latest_checkpoint
from saeforge.train.sharded import INDEX, member_dims, read_slices
from tests.conftest import cli_env

D_IN, B = 16, 64
WORKER = Path(__file__).with_name("_support.py")
SAES = [
    dict(name="tk", architecture="topk", k=4, d_sae=64, k_aux=8),
    dict(name="bt", architecture="batchtopk", k=4, d_sae=48),
    dict(name="jr", architecture="jumprelu", d_sae=32, target_l0=6),
]
# Ten steps; latents die after three, so AuxK is active from step 4.
CONFIG = dict(tokens=B * 10, batch_size=B, checkpoint_every=5, log_every=5, device="cpu", dead_tokens=B * 3,
              saes=SAES)  # fmt: skip


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *args]


def _max_rel_diff(a: Path, b: Path) -> float:
    """The largest relative difference (Frobenius) between the weights of two SAE folders."""
    wa, wb = load_file(str(a / "sae_weights.safetensors")), load_file(str(b / "sae_weights.safetensors"))
    assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    return max(float((wa[k] - wb[k]).norm() / wa[k].norm().clamp_min(1e-12)) for k in wa)


def _assert_matches(reference: Path, run: Path) -> None:
    for spec in SAES:
        rel = _max_rel_diff(reference / spec["name"], run / spec["name"])
        assert rel < 1e-5, (spec["name"], rel)  # fp32; measured ~5e-8 (docs/benchmarks.md)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "acts"
    src = SyntheticSource(D_IN, B)
    write_store(path, torch.cat([src.global_batch(i) for i in range(24)]), hook="layers.1.resid_post")
    return path


def test_bad_layouts_fail_before_any_work(store, tmp_path):
    base = dict(CONFIG, activations=str(store), out=str(tmp_path / "run"), tensor_parallel=2)
    cases = [
        (
            dict(saes=[dict(name="st", architecture="standard", d_sae=32)]),
            "not standard; train this one with",
        ),
        (dict(saes=[dict(name="tk", architecture="topk", k=4, d_sae=33)]), "saes[0] (tk).d_sae: 33 latents"),
        ({}, "tensor_parallel: 2 does not divide the 1 torchrun ranks"),
    ]
    for update, message in cases:
        with pytest.raises(ConfigError) as e:
            train(TrainConfig.parse({**base, **update}))
        assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_latent_ranges_of_a_one_process_checkpoint(store, tmp_path):
    """read_slices cuts every latent-indexed tensor of a one-process checkpoint into T ranges that rebuild it."""
    cfg = TrainConfig.parse(dict(CONFIG, activations=str(store), out=str(tmp_path / "one"), tokens=B * 5))
    train(cfg)
    ckpt = latest_checkpoint(tmp_path / "one" / "checkpoints")
    whole = load_file(str(ckpt / "state.safetensors"))
    from saeforge.sae import create_training_sae
    from saeforge.train.optim import Adam

    dims = {}
    for spec in SAES:
        model = create_training_sae(dict(architecture=spec["architecture"], d_in=D_IN, d_sae=spec["d_sae"]))
        opt = Adam([p for p in model.parameters() if p.requires_grad])
        opt.zero_grad()
        dims.update(member_dims(spec["name"], model, opt))
    assert dims["sae/tk/W_enc"] == 1 and dims["sae/jr/threshold"] == 0 and "sae/bt/threshold" not in dims
    parts = [read_slices(ckpt, dims, t, 2) for t in range(2)]
    for key, t in whole.items():
        if key in dims:
            assert parts[0][key].shape[dims[key]] * 2 == t.shape[dims[key]]
            assert torch.equal(torch.cat([p[key] for p in parts], dims[key]), t), key
        else:
            assert torch.equal(parts[0][key], t) and torch.equal(parts[1][key], t), key


def test_tensor_2_by_data_2_matches_one_process_and_resumes_on_one(store, tmp_path):
    config = dict(CONFIG, activations=str(store))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**config, "out": str(tmp_path / "tp")}))
    cmd = _torchrun(4, "-m", "saeforge", "train", str(path), "--tensor-parallel", "2")
    proc = subprocess.run(cmd, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = train(TrainConfig.parse({**config, "out": str(tmp_path / "one")}))
    _assert_matches(tmp_path / "one", tmp_path / "tp")

    sae = load_sae(tmp_path / "tp" / "tk")  # one ordinary SAE: the whole W_enc, W_dec
    assert sae.W_enc.shape == (D_IN, 64) and sae.W_dec.shape == (64, D_IN) and sae.cfg.k == 4
    card = json.loads((tmp_path / "tp" / "run_card.json").read_text())
    one_card = {r.name: r.run_card for r in one}
    for name in ("tk", "bt", "jr"):
        training = card[name]["training"]
        assert training["tensor_parallel"] == 2 and training["world_size"] == 2
        assert training["state_bytes_per_rank"] < 0.6 * one_card[name]["training"]["state_bytes_per_rank"]
        assert card[name]["final_metrics"]["l0"] == pytest.approx(
            one_card[name]["final_metrics"]["l0"], rel=1e-5
        )

    ckpt = latest_checkpoint(tmp_path / "tp" / "checkpoints")
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == [
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
        INDEX,
        "state.json",
    ]
    index = json.loads((ckpt / INDEX).read_text())["tensors"]
    assert index["sae/tk/W_enc"]["shape"] == [D_IN, 64] and index["sae/tk/W_enc"]["dim"] == 1
    assert len(index["optim/tk/1/exp_avg"]["pieces"]) == 2 and index["sae/tk/b_dec"]["dim"] is None

    # Elastic: the 4-rank checkpoint of step 5 continues in one process to the one-process result.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "tp", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000000010")
    (resumed / "checkpoints" / "latest").unlink()
    train(TrainConfig.parse({**config, "out": str(resumed), "resume": True}))
    _assert_matches(tmp_path / "one", resumed)
    steps = [json.loads(s)["step"] for s in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]
    meta = json.loads((latest_checkpoint(resumed / "checkpoints") / "state.json").read_text())
    assert meta["world_size"] == 1 and meta["loaders"][0]["position"] == 10


def test_kill_9_of_one_rank_while_checkpointing_then_resume_on_another_layout(tmp_path):
    """Rank 1 of a tensor_parallel 2 run is killed after writing its shard of checkpoint 10, before the commit:
    checkpoint 5 stays the latest, and the run continues on 2 data-parallel ranks to the one-process result."""
    source = {"d_in": D_IN, "batch_size": B}
    reference = tmp_path / "one"
    train(TrainConfig.parse({**CONFIG, "out": str(reference)}), source=SyntheticSource(D_IN, B))
    out = tmp_path / "run"
    spec = tmp_path / "killed.json"
    cfg = {**CONFIG, "out": str(out), "tensor_parallel": 2}
    spec.write_text(json.dumps({"config": cfg, "source": source, "action": "block_in_save", "action_at": 10}))
    proc = subprocess.Popen(_torchrun(2, str(WORKER), str(spec)), env=cli_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("BLOCKED "), (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(int(line.split()[1]), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # torchrun stops the surviving rank (~3 s on an idle machine)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert latest_checkpoint(out / "checkpoints").name == "step_000000005"
    partial = out / "checkpoints" / ".tmp-step_000000010"
    assert (partial / "shard-00001-of-00002.safetensors").is_file() and not (partial / "state.json").exists()

    spec.write_text(json.dumps({"config": {**cfg, "tensor_parallel": 1, "resume": True}, "source": source}))
    resumed = subprocess.run(_torchrun(2, str(WORKER), str(spec)), env=cli_env(OMP_NUM_THREADS="1"),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0 and "DONE" in resumed.stdout, resumed.stdout + resumed.stderr
    _assert_matches(reference, out)
    assert not partial.exists() or not (partial / "state.json").exists()
    assert latest_checkpoint(out / "checkpoints").name == "step_000000010"
