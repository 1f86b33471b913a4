"""Crosscoders and transcoders through the trainer: planted known answers, exact resume, torchrun, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from _support import PlantedSites
from safetensors.torch import load_file

from saeforge.activations.writer import write_store
from saeforge.sae import CrossCoder, load_sae
from saeforge.train import ConfigError, TrainConfig, TrainingInterrupted, train
from tests.conftest import cli_env, run_cli

D = 16


def _recovered(W_dec: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each true direction [n, d]: the best cosine with a decoder row [d_sae, d], and that row's index."""
    cos = (true / true.norm(dim=1, keepdim=True)) @ (W_dec / W_dec.norm(dim=1, keepdim=True)).T
    return cos.max(1)


@pytest.mark.parametrize(("arch", "sparsity"), [("batchtopk", {"k": 4}), ("standard", {"target_l0": 4})])
def test_crosscoder_separates_shared_and_site_specific_features(tmp_path, arch, sparsity):
    """12 features write to both sites, 6 to site 0 only, 6 to site 1 only: every recovered latent's share of
    decoder norm on site 0, ||W_dec[i, 0]|| / sum_s ||W_dec[i, s]||, says which group it belongs to."""
    src = PlantedSites(D, 256)
    cfg = TrainConfig.parse(dict(
        tokens=256 * 300, batch_size=256, out=str(tmp_path / "run"), device="cpu", crosscoder=True, plots=False,
        log_every=100, saes=[dict(name="cc", architecture=arch, d_sae=32, lr=3e-3, **sparsity)],
    ))  # fmt: skip
    (result,) = train(cfg, source=src)
    cc = load_sae(result.path)
    assert isinstance(cc, CrossCoder) and cc.cfg.sites == ["site0", "site1"] and cc.cfg.n_sites == 2
    W = cc.W_dec.detach()  # [d_sae, 2, D]
    best, idx = _recovered(W.reshape(len(W), -1), torch.cat(src.dirs, dim=1))
    assert best.mean() >= 0.9 and int((best >= 0.9).sum()) >= 20, best
    share = (W.norm(dim=2)[:, 0] / W.norm(dim=2).sum(1))[idx]
    ok = best >= 0.9
    assert ((share[:12] > 0.25) & (share[:12] < 0.75))[ok[:12]].all(), share[:12]
    assert (share[12:18] > 0.9)[ok[12:18]].all(), share[12:18]
    assert (share[18:] < 0.1)[ok[18:]].all(), share[18:]
    assert result.metrics["fvu"] < 0.7 and result.run_card["data"]["activations"] is None


def _cut_and_resume(tmp_path, make_cfg, make_source):
    straight = make_cfg(tmp_path / "a")
    train(straight, source=make_source())
    cut = make_cfg(tmp_path / "b")

    def term_at_5(event):
        if event.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cut, source=make_source(), progress=term_at_5)
    train(cut.model_copy(update={"resume": True}), source=make_source())
    for name in [s.name for s in straight.saes]:
        wa = load_file(str(tmp_path / "a" / "run" / name / "sae_weights.safetensors"))
        wb = load_file(str(tmp_path / "b" / "run" / name / "sae_weights.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_crosscoder_resume_is_bit_identical(tmp_path):
    def make_cfg(root):
        return TrainConfig.parse(dict(
            tokens=64 * 10, batch_size=64, out=str(root / "run"), device="cpu", crosscoder=True, plots=False,
            checkpoint_every=4, log_every=5,
            saes=[dict(name="bt", architecture="batchtopk", k=4, d_sae=32),
                  dict(name="st", architecture="standard", d_sae=32, sparsity_coefficient=0.5)],
        ))  # fmt: skip

    _cut_and_resume(tmp_path, make_cfg, lambda: PlantedSites(D, 64, n_sites=3))


def _aligned_stores(root, n_sites=2, batches=12, batch=64, d_out=None):
    src = PlantedSites(D, batch, n_sites=n_sites, d_out=d_out)
    parts = [torch.cat(p) for p in zip(*(src.global_batch(i) for i in range(batches)), strict=True)]
    rows = batch * batches
    tokens, positions = (
        torch.arange(rows) + 7,
        torch.stack([torch.arange(rows) // 32, torch.arange(rows) % 32], 1),
    )
    paths = []
    for i, x in enumerate(parts):
        paths.append(root / f"site{i}")
        write_store(paths[-1], x, hook=f"layers.{i}.resid_post", shard_rows=256, token_ids=tokens,
                    positions=positions)  # fmt: skip
    return paths


def test_cli_trains_a_crosscoder_on_aligned_stores_and_refuses_strangers(tmp_path):
    a, b = _aligned_stores(tmp_path)
    out = tmp_path / "run"
    proc = run_cli("train", "--activations", str(a), "--activations", str(b), "--crosscoder",
                   "--architecture", "batchtopk", "--k", "4", "--d-sae", "32", "--tokens", "640", "--batch-size",
                   "64", "--out", str(out), "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cc = load_sae(out / "batchtopk")
    assert isinstance(cc, CrossCoder) and cc.cfg.sites == ["layers.0.resid_post", "layers.1.resid_post"]
    card = json.loads((out / "batchtopk" / "cfg.json").read_text())["metadata"]
    assert card["data"]["activations"] == [str(a), str(b)] and len(card["training"]["activation_scale"]) == 2

    with pytest.raises(ConfigError, match=r"pass crosscoder: true \(--crosscoder\)"):
        TrainConfig.parse(dict(activations=[str(a), str(b)], tokens=640, batch_size=64, out=str(tmp_path / "x"),
                               saes=[dict(name="c", architecture="topk")]))  # fmt: skip
    other = tmp_path / "other"
    write_store(other, torch.randn(768, D), hook="layers.5.resid_post", token_ids=torch.arange(768) + 9,
                positions=torch.zeros(768, 2, dtype=torch.long))  # fmt: skip
    with pytest.raises(ConfigError, match="stores were not captured together: row 0"):
        train(TrainConfig.parse(dict(activations=[str(a), str(other)], crosscoder=True, tokens=640, batch_size=64,
                                     out=str(tmp_path / "y"), device="cpu",
                                     saes=[dict(name="c", architecture="batchtopk", k=4, d_sae=32)])))  # fmt: skip


def test_two_gloo_ranks_train_the_same_crosscoder_as_one_process(tmp_path):
    """torchrun on 2 CPU ranks (each reading its half of every global batch) against one process: BatchTopK's
    selection over the global batch and the per-site scales make both runs the same crosscoder."""
    config = dict(
        tokens=64 * 8, batch_size=64, log_every=4, device="cpu", dead_tokens=128, crosscoder=True,
        normalize_activations="none", plots=False,
        saes=[dict(name="bt", architecture="batchtopk", k=4, d_sae=32),
              dict(name="st", architecture="standard", d_sae=32, target_l0=4)],
    )  # fmt: skip
    spec = {"config": {**config, "out": str(tmp_path / "two")}, "source": {"d_in": D, "batch_size": 64},
            "planted": True}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    worker = os.path.join(os.path.dirname(__file__), "_support.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           str(tmp_path / "spec.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = train(TrainConfig.parse({**config, "out": str(tmp_path / "one")}), source=PlantedSites(D, 64))
    for r in one:
        w1 = load_file(str(r.path / "sae_weights.safetensors"))
        w2 = load_file(str(tmp_path / "two" / r.name / "sae_weights.safetensors"))
        for k in w1:
            rel = (w1[k] - w2[k]).norm() / w1[k].norm().clamp_min(1e-12)
            assert rel < 1e-3, (r.name, k, float(rel))


def test_run_yaml_accepts_crosscoder_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(dict(activations=["a", "b"], crosscoder=True, tokens=64, batch_size=64,
                                        out="o", saes=[dict(name="c", architecture="batchtopk")])))  # fmt: skip
    cfg = TrainConfig.from_yaml(path)
    assert cfg.crosscoder and [p.name for p in cfg.activation_paths] == ["a", "b"]
    with pytest.raises(ConfigError, match="two or more activation stores"):
        TrainConfig.parse(dict(activations="a", crosscoder=True, tokens=64, batch_size=64, out="o",
                               saes=[dict(name="c", architecture="batchtopk")]))  # fmt: skip


class _LinearPlusSparse(PlantedSites):
    """PlantedSites' transcoder pair with a dense linear part added to the target: y = sum_j a_j v_j + x @ A.T."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.A = torch.randn(
            self.dirs[1].shape[1], self.dirs[0].shape[1], generator=torch.Generator().manual_seed(5)
        )

    def global_batch(self, i):
        x, y = super().global_batch(i)
        return x, y + x @ self.A.T


def _transcoder_cfg(root, saes, steps, batch=256, **over):
    return TrainConfig.parse(dict(tokens=batch * steps, batch_size=batch, out=str(root / "run"), device="cpu",
                                  plots=False, log_every=50, saes=saes, **over))  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "sparsity", "steps"),
    [
        ("topk", {"k": 4}, 200),
        ("batchtopk", {"k": 4}, 200),
        ("jumprelu", {"target_l0": 4}, 400),  # its L0 penalty and lr warm up over the first 10% / 5%
        ("standard", {"target_l0": 4}, 200),
    ],
)
def test_transcoder_recovers_a_planted_sparse_map(tmp_path, arch, sparsity, steps):
    """x = sum_j a_j u_j and y = sum_j a_j v_j (16 features, 3 active per token): the decoder rows must be the
    v_j (MMCS >= 0.9), read from x alone."""
    src = PlantedSites(D, 256, shared=16, specific=0, l0=3.0, d_out=12)
    (r,) = train(_transcoder_cfg(tmp_path, [dict(name="tc", architecture=arch, d_sae=32, lr=3e-3, **sparsity)], steps),
                 source=src)  # fmt: skip
    tc = load_sae(r.path)
    assert tc.cfg.d_in == D and tc.cfg.d_out == 12 and tuple(tc.W_dec.shape) == (32, 12)
    best, _ = _recovered(tc.W_dec.detach(), src.dirs[1])
    assert best.mean() >= 0.9, best
    x, y = src.global_batch(10_000)
    fvu = ((tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()
    assert fvu < 0.6 and fvu == pytest.approx(r.metrics["fvu"], abs=0.25)


def test_skip_connection_carries_the_linear_part_of_the_map(tmp_path):
    src = _LinearPlusSparse(D, 256, shared=24, specific=0, d_out=12)
    saes = [dict(name="plain", architecture="topk", k=4, d_sae=32, lr=3e-3),
            dict(name="skip", architecture="topk", k=4, d_sae=32, lr=3e-3, skip_connection=True)]  # fmt: skip
    plain, skip = train(_transcoder_cfg(tmp_path, saes, 150), source=src)
    assert type(load_sae(skip.path)).__name__ == "TopKSkipTranscoder"
    assert skip.metrics["fvu"] < 0.5 * plain.metrics["fvu"], (skip.metrics["fvu"], plain.metrics["fvu"])
    x, y = src.global_batch(10_000)
    tc = load_sae(skip.path)
    assert ((tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item() < 0.5 * plain.metrics["fvu"]


def test_transcoder_resume_is_bit_identical(tmp_path):
    def make_cfg(root):
        saes = [dict(name="bt", architecture="batchtopk", k=4, d_sae=32, skip_connection=True),
                dict(name="jr", architecture="jumprelu", d_sae=32, target_l0=4)]  # fmt: skip
        return _transcoder_cfg(root, saes, 10, batch=64, checkpoint_every=4)

    _cut_and_resume(tmp_path, make_cfg, lambda: PlantedSites(D, 64, shared=16, specific=0, d_out=12))


def test_transcoder_trains_from_two_stores_with_the_hooks_in_its_card(tmp_path):
    x_store, y_store = _aligned_stores(tmp_path, n_sites=2, d_out=12)
    cfg = TrainConfig.parse(dict(activations=str(x_store), target_activations=str(y_store), tokens=640,
                                 batch_size=64, out=str(tmp_path / "run"), device="cpu", plots=False,
                                 saes=[dict(name="tc", architecture="standard", d_sae=32)]))  # fmt: skip
    (r,) = train(cfg)
    meta = json.loads((r.path / "cfg.json").read_text())
    assert meta["architecture"] == "transcoder" and meta["d_out"] == 12
    # cfg.json spells hooks as TransformerLens does (SAELens attaches by them), saeforge's names beside
    assert meta["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert meta["metadata"]["hook_name_out"] == "blocks.1.hook_resid_post"
    assert meta["metadata"]["saeforge_hook_name"] == "layers.0.resid_post"
    assert meta["metadata"]["saeforge_hook_name_out"] == "layers.1.resid_post"
    assert load_sae(r.path).cfg.metadata["hook_name_out"] == "layers.1.resid_post"
    assert meta["metadata"]["data"]["target_activations"] == str(y_store)
