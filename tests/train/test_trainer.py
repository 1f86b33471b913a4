"""The training loop in-process: sweeps, metrics against a float64 reference, dead latents in tokens, faults,
interruption and exact resume, checkpoint files."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from _support import SyntheticSource
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file
from torch import nn

import saeforge.sae as sae_api
from saeforge.sae import SAEConfig, TrainStepOutput
from saeforge.sae.jumprelu import JumpReLUSAE
from saeforge.sae.topk import TopKSAE
from saeforge.sae.training import TopKFamilySAE
from saeforge.train import ConfigError, NonFiniteError, TrainConfig, TrainingInterrupted, train
from saeforge.train.checkpoint import (
    LATEST,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
)

D_IN, B = 16, 64


def _cfg(tmp_path, steps=12, **over):
    data = dict(
        tokens=B * steps,
        batch_size=B,
        out=str(tmp_path / "run"),
        log_every=4,
        device="cpu",
        saes=[
            dict(name="topk", architecture="topk", k=4, d_sae=64, seed=1),
            dict(name="batch", architecture="batchtopk", k=4, d_sae=48, lr=3e-3, seed=2),
        ],
    )
    data.update(over)
    return TrainConfig.parse(data)


class CountingSource(SyntheticSource):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def __next__(self):
        self.calls += 1
        return super().__next__()


def test_sweep_trains_every_sae_on_each_batch_once(tmp_path):
    cfg = _cfg(tmp_path, evaluation_datasets=["heldout.jsonl"])
    source = CountingSource(D_IN, B)
    events = []
    results = train(cfg, source=source, progress=events.append)
    assert source.calls == cfg.total_steps == 12
    assert [e.step for e in events] == list(range(1, 13))
    assert [e.tokens for e in events][-1] == 12 * B and all(e.tokens_per_s > 0 for e in events)
    assert [e.metrics is not None for e in events] == [s % 4 == 0 for s in range(1, 13)]

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    for r in results:
        assert (run / r.name / "cfg.json").is_file() and (run / r.name / "sae_weights.safetensors").is_file()
        assert [h["step"] for h in r.history] == [4, 8, 12]
        assert set(r.metrics) >= {"loss", "loss_mse", "l0", "fvu", "dead_fraction", "lr"}
        assert r.metrics["l0"] == pytest.approx(4.0, abs=1e-6)
        assert 0 < r.metrics["fvu"] < r.history[0]["fvu"]
        assert isinstance(r.sae, TopKSAE if r.name == "topk" else JumpReLUSAE)
        card = json.loads((run / r.name / "cfg.json").read_text())["metadata"]
        assert card["d_sae"] == r.sae.d_sae and card["d_in"] == D_IN and card["sparsity"]["k"] == 4
        assert card["training"]["batch_size"] == B and card["evaluation_datasets"] == ["heldout.jsonl"]
    assert json.loads((run / "run_card.json").read_text())["batch"]["training"]["optimizer"]["lr"] == 3e-3
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_match_float64_reference(tmp_path):
    """Each record (log_every=1) against a float64 recomputation from the checkpoint before that step."""
    cfg = _cfg(
        tmp_path,
        steps=5,
        log_every=1,
        checkpoint_every=1,
        keep_checkpoints=10,
        normalize_activations="none",
        saes=[dict(name="a", architecture="topk", k=3, d_sae=32)],
    )
    source = SyntheticSource(D_IN, B)
    train(cfg, source=source)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for step in range(1, 5):
        w = {
            k.split("/")[-1]: v.double()
            for k, v in load_file(
                str(tmp_path / "run" / "checkpoints" / f"step_{step:09d}" / "state.safetensors")
            ).items()
            if k.startswith("sae/a/")
        }
        x = source.global_batch(step).double()
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        vals, idx = pre.topk(3, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        x_hat = z @ w["W_dec"] + w["b_dec"]
        err = (x_hat - x).pow(2).sum()
        want = {
            "loss_mse": float(err / B),
            "fvu": float(err / (x - x.mean(0)).pow(2).sum()),
            "l0": float((z > 0).sum(-1).double().mean()),
        }
        got = records[step]["saes"]["a"]
        assert records[step]["step"] == step + 1
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=2e-5), key


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    architecture: str
    d_in: int
    d_sae: int
    seed: int = 0


class ScriptedFiring(nn.Module):
    """Latent j fires at steps that are multiples of j + 1; records the dead_mask it is given."""

    seen: list[torch.Tensor] = []

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.W = nn.Parameter(torch.randn(cfg.d_sae, cfg.d_in) * 0.1)

    def training_forward(self, inp):
        ScriptedFiring.seen.append(inp.dead_mask.clone())
        x_hat = inp.x @ self.W.t() @ self.W
        loss = (x_hat - inp.x).pow(2).sum(-1).mean()
        fired = torch.tensor([1 if inp.step % (j + 1) == 0 else 0 for j in range(self.cfg.d_sae)])
        return TrainStepOutput(x_hat, loss, {"mse": loss}, fired, fired.sum().float())

    def init_from_data(self, x):
        pass

    def before_optimizer_step(self):
        pass

    def after_optimizer_step(self):
        pass

    def export(self, activation_scale):
        return TopKSAE(SAEConfig(architecture="topk", d_in=self.cfg.d_in, d_sae=self.cfg.d_sae, k=1))


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(sae_api, "TrainingSAEConfig", _Cfg)
    monkeypatch.setattr(sae_api, "TRAINING_ARCHITECTURES", {"scripted": ScriptedFiring})
    monkeypatch.setattr(sae_api, "create_training_sae", ScriptedFiring)
    ScriptedFiring.seen = []


@pytest.mark.parametrize(
    "batch_size, given, dead_batches, dead_tokens",
    [
        (32, 192, None, 192),  # the run's dead_tokens
        (64, 192, None, 192),
        (32, None, None, 128),  # the run's default: a twentieth of 80 steps of 32
        (32, None, 3, 96),  # the architecture's dead_batches
        (32, None, 5, 128),  # ... capped at the run's default
        (32, 192, 3, 192),  # the run's dead_tokens overrides the architecture's
    ],
)
def test_dead_latents_are_counted_in_tokens(tmp_path, scripted, monkeypatch, batch_size, given, dead_batches,
                                            dead_tokens):  # fmt: skip
    monkeypatch.setattr(ScriptedFiring, "dead_batches", dead_batches, raising=False)
    steps, d_sae = 80, 8
    cfg = TrainConfig.parse(
        dict(
            tokens=batch_size * steps,
            batch_size=batch_size,
            out=str(tmp_path / "run"),
            dead_tokens=given,
            log_every=steps,
            device="cpu",
            saes=[dict(name="s", architecture="scripted", d_sae=d_sae)],
        )
    )
    results = train(cfg, source=SyntheticSource(D_IN, batch_size))
    assert results[0].run_card["training"]["dead_tokens"] == dead_tokens
    last_fired = [0] * d_sae  # step of the last firing, naive bookkeeping
    for step in range(steps):
        want = [step > 0 and (step - 1 - last_fired[j]) * batch_size >= dead_tokens for j in range(d_sae)]
        assert ScriptedFiring.seen[step].tolist() == want, step
        for j in range(d_sae):
            if step % (j + 1) == 0:
                last_fired[j] = step
    final = [(steps - 1 - last_fired[j]) * batch_size >= dead_tokens for j in range(d_sae)]
    assert results[0].metrics["dead_fraction"] == pytest.approx(sum(final) / d_sae)
    assert any(final) and not all(final)


class _CfgK(_Cfg):
    k: int | None = None


class ScriptedCounts(ScriptedFiring):
    """Latent j fires on (step * (j + 1)) % 4 tokens of batch `step`: 0 to 3."""

    def training_forward(self, inp):
        out = super().training_forward(inp)
        out.fired = torch.tensor([float(inp.step * (j + 1) % 4) for j in range(self.cfg.d_sae)])
        return out


@pytest.mark.parametrize("batch_size, floor", [(32, 4), (8, 0)])
def test_a_latent_firing_under_the_live_rate_over_its_window_is_dead(
    tmp_path, monkeypatch, batch_size, floor
):
    """live_rate = rare_fraction * k / d_sae = 0.5 / 8 and a window of 2 batches: with batches of 32 a latent
    that fired on fewer than 4 tokens in the last 2 batches is dead too; with batches of 8 the floor is one fire,
    so only the not-fired rule counts. Against naive bookkeeping of the counts."""
    monkeypatch.setattr(sae_api, "TrainingSAEConfig", _CfgK)
    monkeypatch.setattr(sae_api, "TRAINING_ARCHITECTURES", {"scripted": ScriptedCounts})
    monkeypatch.setattr(sae_api, "create_training_sae", ScriptedCounts)
    monkeypatch.setattr(ScriptedCounts, "rare_fraction", 0.5, raising=False)
    monkeypatch.setattr(ScriptedCounts, "dead_batches", 2, raising=False)
    ScriptedFiring.seen = []
    steps, d_sae = 40, 8
    cfg = TrainConfig.parse(
        dict(
            tokens=batch_size * steps,
            batch_size=batch_size,
            out=str(tmp_path / "run"),
            log_every=steps,
            device="cpu",
            saes=[dict(name="s", architecture="scripted", d_sae=d_sae, k=1)],
        )
    )
    results = train(cfg, source=SyntheticSource(D_IN, batch_size))
    assert results[0].run_card["training"]["live_rate"] == pytest.approx(0.5 / d_sae)

    def count(step, j):
        return step * (j + 1) % 4

    def dead(steps_done, j, rare):
        last = max([s for s in range(steps_done) if count(s, j) > 0], default=-1)  # the start counts as fired
        not_fired = steps_done - 1 - last >= 2
        recent = sum(count(s, j) for s in range(max(0, steps_done - 2), steps_done))
        return not_fired or (rare and steps_done >= 2 and recent < floor)

    for step in range(steps):
        assert ScriptedFiring.seen[step].tolist() == [dead(step, j, True) for j in range(d_sae)], step
    final = [dead(steps, j, True) for j in range(d_sae)]
    assert results[0].metrics["dead_fraction"] == pytest.approx(sum(final) / d_sae)
    if floor:  # latents firing on 1 to 3 tokens in two batches are dead here, and not by the not-fired rule
        assert any(dead(s, j, True) != dead(s, j, False) for s in range(steps) for j in range(d_sae))


def test_nan_input_stops_naming_step_and_shard_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every=3)
    with pytest.raises(
        NonFiniteError,
        match=r"NaN or inf in the input activations at step 7, batch from "
        r"synthetic batch 7.*last good checkpoint is .*step_000000006",
    ):
        train(cfg, source=SyntheticSource(D_IN, B, nan_at=7))
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_000000003", "step_000000006"]
    for p in ckpts:
        assert all(torch.isfinite(t.float()).all() for t in load_file(str(p / "state.safetensors")).values())


def test_nan_loss_names_the_sae(tmp_path, monkeypatch):
    original = sae_api.create_training_sae

    def poisoned(cfg):
        model = original(cfg)
        if cfg.architecture == "batchtopk":
            forward = model.training_forward

            def nan_at_step_2(inp):
                out = forward(inp)
                if inp.step == 2:
                    out.loss = out.loss * float("nan")
                return out

            model.training_forward = nan_at_step_2
        return model

    monkeypatch.setattr(sae_api, "create_training_sae", poisoned)
    with pytest.raises(
        NonFiniteError, match=r"loss of SAE \['batch'\].*step 2.*no checkpoint had been written"
    ):
        train(_cfg(tmp_path), source=SyntheticSource(D_IN, B))


def _final_state(run):
    return load_file(str(latest_checkpoint(run / "checkpoints") / "state.safetensors"))


def test_sigterm_saves_at_step_boundary_and_resume_is_bit_identical(tmp_path):
    straight = _cfg(tmp_path / "a", checkpoint_every=5)
    train(straight, source=SyntheticSource(D_IN, B))

    cut = _cfg(tmp_path / "b", checkpoint_every=5)

    def term_at_7(event):
        if event.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after step 7 of 12") as info:
        train(cut, source=SyntheticSource(D_IN, B), progress=term_at_7)
    assert info.value.checkpoint.name == "step_000000007"
    assert (tmp_path / "b" / "run" / "checkpoints" / LATEST).read_text().strip() == "step_000000007"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    with pytest.raises(ConfigError, match="already holds a run"):
        train(cut, source=SyntheticSource(D_IN, B))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['seed'\]"):
        train(cut.model_copy(update={"resume": True, "seed": 5}), source=SyntheticSource(D_IN, B))

    train(cut.model_copy(update={"resume": True}), source=SyntheticSource(D_IN, B))
    a, b = _final_state(tmp_path / "a" / "run"), _final_state(tmp_path / "b" / "run")
    assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name in ("topk", "batch"):
        wa = load_file(str(tmp_path / "a" / "run" / name / "sae_weights.safetensors"))
        wb = load_file(str(tmp_path / "b" / "run" / name / "sae_weights.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def strip(p):
        return [
            {k: v for k, v in json.loads(s).items() if k not in ("tokens_per_s", "elapsed_s")}
            for s in p.read_text().splitlines()
        ]

    assert strip(tmp_path / "a" / "run" / "metrics.jsonl") == strip(tmp_path / "b" / "run" / "metrics.jsonl")


def test_the_live_rate_counts_resume_bit_identically(tmp_path, monkeypatch):
    """With the live rate on (floor 0.5 * 4/64 * 2 * 64 = 4 fires in a 2-batch window), a SIGTERM at step 7
    and a resume end with the same fire counts, dead clocks and weights as a run straight through."""
    monkeypatch.setattr(TopKFamilySAE, "rare_fraction", 0.5)
    saes = [dict(name="topk", architecture="topk", k=4, d_sae=64, seed=1)]
    straight = _cfg(tmp_path / "a", checkpoint_every=5, dead_tokens=2 * B, saes=saes)
    train(straight, source=SyntheticSource(D_IN, B))
    cut = _cfg(tmp_path / "b", checkpoint_every=5, dead_tokens=2 * B, saes=saes)

    def term_at_7(event):
        if event.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cut, source=SyntheticSource(D_IN, B), progress=term_at_7)
    train(cut.model_copy(update={"resume": True}), source=SyntheticSource(D_IN, B))
    a, b = _final_state(tmp_path / "a" / "run"), _final_state(tmp_path / "b" / "run")
    assert a["live/topk"].shape == (2, 64) and a["live/topk"].sum() == 2 * B * 4  # k fires per token
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stateless_source_is_fast_forwarded_on_resume(tmp_path):
    class Plain:
        def __init__(self):
            self.inner = SyntheticSource(D_IN, B)

        def __iter__(self):
            return self.inner

    train(_cfg(tmp_path / "a"), source=Plain())
    cut = _cfg(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        train(cut, source=Plain(), progress=lambda e: e.step == 5 and os.kill(os.getpid(), signal.SIGINT))
    train(cut.model_copy(update={"resume": True}), source=Plain())
    a, b = _final_state(tmp_path / "a" / "run"), _final_state(tmp_path / "b" / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_pruned_and_latest_survives_damage(tmp_path):
    root = tmp_path / "ck"
    t = {"w": torch.arange(4.0)}
    for step in (1, 2, 3, 4):
        save_checkpoint(root, step, t, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_000000003", "step_000000004"]
    assert latest_checkpoint(root).name == "step_000000004"
    (root / ".tmp-step_000000005-1").mkdir()  # a save killed before its rename
    (root / LATEST).write_text("step_000000009\n")  # stale pointer
    assert latest_checkpoint(root).name == "step_000000004"
    (root / LATEST).unlink()
    assert latest_checkpoint(root).name == "step_000000004"
    assert not any(p.name.startswith(".tmp") for p in root.iterdir() if p.name != ".tmp-step_000000005-1")


def test_a_save_that_dies_midway_leaves_latest_on_the_previous_checkpoint(tmp_path, monkeypatch):
    import saeforge.train.checkpoint as ck

    root = tmp_path / "ck"
    save_checkpoint(root, 1, {"w": torch.ones(3)}, {"step": 1}, keep=3)

    def dies(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(ck.json, "dump", dies)  # state.json, written after the tensors
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(root, 2, {"w": torch.zeros(3)}, {"step": 2}, keep=3)
    assert (root / LATEST).read_text() == "step_000000001\n"
    assert [p.name for p in list_checkpoints(root)] == ["step_000000001"]
    monkeypatch.undo()
    save_checkpoint(root, 2, {"w": torch.zeros(3)}, {"step": 2}, keep=3)
    assert latest_checkpoint(root).name == "step_000000002"
    assert torch.equal(load_file(str(root / "step_000000002" / "state.safetensors"))["w"], torch.zeros(3))


def test_activation_scale_from_first_batch_is_recorded(tmp_path):
    results = train(_cfg(tmp_path, steps=2), source=SyntheticSource(D_IN, B))
    x0 = SyntheticSource(D_IN, B).global_batch(0).double()
    want = math.sqrt(D_IN) / x0.norm(dim=-1).mean().item()
    assert results[0].run_card["training"]["activation_scale"] == pytest.approx(want, rel=1e-5)


def test_nan_row_in_a_store_is_located_by_shard_and_row(tmp_path):
    import hashlib

    from safetensors.torch import save_file

    from saeforge.activations.manifest import Manifest, shards_digest
    from saeforge.activations.writer import write_store

    src = SyntheticSource(D_IN, B)
    write_store(tmp_path / "acts", torch.cat([src.global_batch(i) for i in range(8)]), shard_rows=256)
    # The model produced an inf in shard 1, row 44 (the shard's checksum is that of the bad data).
    shard = tmp_path / "acts" / "shard-000-000001.safetensors"
    tensors = load_file(str(shard))
    tensors["activations"][44, 5] = float("inf")
    save_file(tensors, str(shard))
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    manifest["shards_digest"] = shards_digest(Manifest.model_validate(manifest).shards)
    (tmp_path / "acts" / "manifest.json").write_text(json.dumps(manifest))

    cfg = _cfg(tmp_path, steps=8, activations=str(tmp_path / "acts"))
    with pytest.raises(
        NonFiniteError,
        match=r"input activations at step \d, batch from shard .*shard-000-000001"
        r"\.safetensors rows \[44\]",
    ):
        train(cfg)


def test_non_finite_activation_scale_is_a_config_error(tmp_path):
    class NoStats(SyntheticSource):
        activation_scale = float("nan")

    with pytest.raises(ConfigError, match="normalize_activations: the activation scale"):
        train(_cfg(tmp_path), source=NoStats(D_IN, B))


def test_a_moved_store_resumes_and_other_data_is_refused(tmp_path):
    import shutil

    from saeforge.activations.writer import write_store

    src = SyntheticSource(D_IN, B)
    data = torch.cat([src.global_batch(i) for i in range(8)])
    write_store(tmp_path / "acts", data, shard_rows=256)
    write_store(tmp_path / "other", data * 2, shard_rows=256)
    cfg = _cfg(tmp_path, steps=6, activations=str(tmp_path / "acts"))
    with pytest.raises(TrainingInterrupted):
        train(cfg, progress=lambda e: e.step == 3 and os.kill(os.getpid(), signal.SIGINT))
    shutil.copytree(tmp_path / "acts", tmp_path / "moved")
    with pytest.raises(ConfigError, match=r"activations: the store .*other holds other data"):
        train(cfg.model_copy(update={"resume": True, "activations": tmp_path / "other"}))
    results = train(cfg.model_copy(update={"resume": True, "activations": tmp_path / "moved"}))
    assert [h["step"] for h in results[0].history] == [4, 6]


def test_step_extras_are_logged_in_metrics_jsonl(tmp_path):
    """The adaptive lambda (target_l0) and BatchTopK's threshold reach metrics.jsonl at each record."""
    cfg = _cfg(
        tmp_path,
        steps=8,
        normalize_activations="none",
        saes=[
            dict(name="jr", architecture="jumprelu", target_l0=4, d_sae=32),
            dict(name="bt", architecture="batchtopk", k=4, d_sae=32),
        ],
    )
    results = train(cfg, source=SyntheticSource(D_IN, B))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_name = {r.name: r for r in results}
    lam = [r["saes"]["jr"]["sparsity_coefficient"] for r in records]
    assert len(lam) == 2 and lam[0] != lam[1]  # the controller moved lambda between records
    assert records[-1]["saes"]["bt"]["threshold"] > 0
    assert by_name["bt"].sae.threshold.unique().item() == pytest.approx(
        records[-1]["saes"]["bt"]["threshold"], rel=1e-5
    )


class ShapedSource(SyntheticSource):
    """The same batches as SyntheticSource, each as [2, B / 2, d_in] (sequences x positions)."""

    def __next__(self):
        return super().__next__().reshape(2, -1, self.d_in)


def test_on_step_sees_each_update_and_final_checkpoint_can_be_skipped(tmp_path):
    cfg = _cfg(tmp_path, steps=5, final_checkpoint=False, checkpoint_every=2, plots=False)
    seen = []

    def on_step(event):
        w = event.saes["topk"].W_dec.detach().clone()
        assert event.x.shape == (B, D_IN)
        seen.append((event.step, w))

    results = train(cfg, source=SyntheticSource(D_IN, B), on_step=on_step)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(seen, seen[1:], strict=False))
    # The callback saw the weights after the last optimiser step: they are the exported ones (scale folded in,
    # so compare directions of the unit-norm decoder rows).
    exported = results[0].sae.W_dec.detach()
    assert torch.allclose(exported / exported.norm(dim=1, keepdim=True), seen[-1][1], atol=1e-5)
    # Periodic checkpoints at steps 2 and 4; none after the last step.
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == [checkpoint_name(2), checkpoint_name(4)]


def test_batches_of_any_leading_shape_train_like_flat_rows(tmp_path):
    flat = train(_cfg(tmp_path / "a", steps=3, plots=False), source=SyntheticSource(D_IN, B))
    shaped = train(_cfg(tmp_path / "b", steps=3, plots=False), source=ShapedSource(D_IN, B))
    for a, b in zip(flat, shaped, strict=True):
        assert torch.equal(a.sae.W_enc, b.sae.W_enc) and torch.equal(a.sae.W_dec, b.sae.W_dec)
