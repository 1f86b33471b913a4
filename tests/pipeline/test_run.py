"""`saeforge run`: the pipeline end to end on a tiny local model, the built-in example's config, config errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from saeforge import load_sae
from saeforge.activations import ActivationStore
from saeforge.pipeline import ConfigError, load_run_config, run_pipeline


def _config(tmp_path, model_dir, **over) -> dict:
    cfg = {
        "model": str(model_dir),
        "data": "builtin:train",
        "eval_data": "builtin:heldout",
        "hooks": ["layers.1.resid_post"],
        "out": str(tmp_path / "run"),
        "capture": {"tokens": 6000, "context_size": 64, "shard_tokens": 3000},
        "eval_capture_tokens": 2000,
        "train": {
            "tokens": 12288,
            "batch_size": 512,
            "saes": [{"name": "topk", "architecture": "topk", "k": 8, "expansion_factor": 4}],
        },
        "eval": {"contexts": 4},
        "report": {"latents": 3, "contexts_per_latent": 2},
    }
    cfg.update(over)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_run_writes_the_run_directory(tmp_path, tiny_model, cli):
    model = tiny_model("gpt2")
    cfg = _config(tmp_path, model)
    proc = cli("run", cfg, "--out", tmp_path / "elsewhere")
    out = tmp_path / "elsewhere"  # --out overrides the config's out
    assert "report:" in proc.stdout and "FVU" in proc.stdout
    assert re.search(r"^took (\d+ s|\d+ min \d+ s)$", proc.stdout, re.M), proc.stdout

    assert yaml.safe_load((out / "config.yaml").read_text())["out"] == str(out)
    train_store = ActivationStore.open(out / "activations" / "train" / "layers.1.resid_post")
    held_store = ActivationStore.open(out / "activations" / "heldout" / "layers.1.resid_post")
    assert train_store.num_rows == 6000 and held_store.num_rows == 2000

    sae_dir = out / "saes" / "layers.1.resid_post" / "topk"
    for f in ("cfg.json", "sae_weights.safetensors", "metrics.json"):
        assert (sae_dir / f).is_file(), f
    sae = load_sae(sae_dir)
    assert sae.cfg.metadata["hook_name"] == "layers.1.resid_post"
    x = next(held_store.iter_batches(256))
    z = sae.encode(x)
    assert z.shape == (256, sae.d_sae)
    assert torch.all((z > 0).sum(-1) <= 8)

    metrics = json.loads((sae_dir / "metrics.json").read_text())
    for key in ("fvu", "explained_variance", "l0", "dead_fraction", "verdict"):
        assert key in metrics
    assert 0 < metrics["fvu"] < 1
    # The SAE card carries the evaluation: front matter and the Markdown table.
    card = (sae_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["verdict"] == metrics["verdict"] and front["metrics"]["fvu"] == metrics["fvu"]
    assert (
        front["hook_name"] == "layers.1.resid_post"
        and front["transformerlens_hook_name"] == "blocks.1.hook_resid_post"
    )
    assert f"| {metrics['fvu']:.4g} |" in card and "builtin:train" in card
    # The printed headline numbers are the evaluation's.
    assert f"{metrics['fvu']:.4f}" in proc.stdout

    report = (out / "report.html").read_text()
    # Loss and FVU curves and one density histogram; TopK's L0 is constant, so it is a number, not a plot
    # (issue 13: no plot that carries no information, no figure twice).
    assert report.count("data:image/png;base64,") == 3 + ("dead fraction (of latents): 0 at" not in report)
    assert "L0 (active latents per token): 8 at every logged step (topk)" in report
    assert report.count('class="latent"') == 3
    assert "verdict" in report


def test_rerun_resumes_and_reuses_the_finished_stages(tmp_path, tiny_model):
    model = tiny_model("gpt2")
    plan = load_run_config(_config(tmp_path, model))
    first = run_pipeline(plan)
    weights = (first.out / "saes" / "layers.1.resid_post" / "topk" / "sae_weights.safetensors").read_bytes()
    second = run_pipeline(load_run_config(_config(tmp_path, model)))
    assert second.metrics[0]["fvu"] == pytest.approx(first.metrics[0]["fvu"])
    again = (second.out / "saes" / "layers.1.resid_post" / "topk" / "sae_weights.safetensors").read_bytes()
    assert again == weights


def test_builtin_example_config_resolves_to_minilm():
    plan = load_run_config(None)
    assert plan.run.hooks == ["layers.3.resid_post"]
    spec = plan.train["layers.3.resid_post"].saes[0]
    assert spec.architecture == "topk" and spec.k == 32 and spec.expansion_factor == 16
    assert (plan.model_dir / "model.safetensors").is_file()
    assert plan.capture_heldout is not None and plan.run.eval_data == "builtin:heldout"


def test_builtin_example_runs_end_to_end_at_small_scale(tmp_path):
    """The built-in example's exact pipeline (MiniLM, layer 3), with token counts cut to seconds."""
    raw = yaml.safe_load(load_run_config(None).run.model_dump_json())
    raw["capture"]["tokens"] = 4096
    raw["capture"]["shard_tokens"] = 4096
    raw["eval_capture_tokens"] = 1024
    raw["train"]["tokens"] = 8192
    raw["train"]["batch_size"] = 1024
    raw["eval"]["contexts"] = 2
    raw["report"]["latents"] = 2
    raw["out"] = str(tmp_path / "example")
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_pipeline(load_run_config(path))
    (m,) = result.metrics
    assert m["l0"] <= 32 + 1e-6 and 0 < m["fvu"] < 1
    assert load_sae(tmp_path / "example" / "saes" / "layers.3.resid_post" / "topk-k32-x16").d_sae == 384 * 16


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"trian": {}}, "trian"),
        ({"capture": {"tokens": 100, "model": "x"}}, "capture.model"),
        ({"capture": {"tokens": -5}}, "capture.tokens"),
        (
            {"capture": {"tokens": 100, "finetuned_model": "ft"}},
            "saeforge capture --model BASE --model FINETUNED",
        ),
        (
            {"train": {"tokens": 1000, "batch_size": 100, "saes": [{"name": "a", "architecture": "nope"}]}},
            "nope",
        ),
        ({"model": "gpt2"}, "local directory"),
    ],
)
def test_config_errors_name_the_field_before_any_work(tmp_path, tiny_model, override, message):
    path = _config(tmp_path, tiny_model("gpt2"), **override)
    with pytest.raises((ConfigError, ValueError)) as e:
        load_run_config(path)
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_cli_run_reports_config_errors(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: gpt2\ndata: builtin\nhooks: [layers.0.resid_post]\ntrain: {tokens: 1, saes: []}\n")
    proc = cli("run", bad, check=False)
    assert proc.returncode == 2
    assert "error" in proc.stdout.lower()
