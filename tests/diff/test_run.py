"""`run_diff` over two aligned stores and the files it writes (diff.json, latents.csv, diff_report.html)."""

from __future__ import annotations

import csv
import html
import json

import pytest
import torch

from saeforge.activations import StoreError, write_store
from saeforge.diff.config import DiffConfig
from saeforge.diff.outputs import write_diff_outputs
from saeforge.diff.run import run_diff
from saeforge.sae import load_sae
from saeforge.synthetic import PairedSyntheticActivations, PairedSyntheticConfig, category_recovery
from tests.diff.test_analysis import _planted_artefacts
from tests.interpret.judge_server import JudgeServer


def _stores(tmp_path, xb, xf, shift_token: bool = False):
    n = xb.shape[0]
    tok = torch.arange(n) % 50
    tok[xf[:, 1] > 0] = 77  # the token on which the fine-tune-only concept e1 fires
    pos = torch.stack([torch.arange(n) // 40, torch.arange(n) % 40], 1)
    write_store(
        tmp_path / "base", xb, hook="layers.1.resid_post", token_ids=tok, positions=pos, shard_rows=1500
    )
    ft_tok = tok.clone()
    if shift_token:
        ft_tok[123] += 1
    write_store(
        tmp_path / "ft", xf, hook="layers.1.resid_post", token_ids=ft_tok, positions=pos, shard_rows=1500
    )
    return tmp_path / "base", tmp_path / "ft"


def test_run_writes_the_diff(tmp_path):
    coder, xb, xf = _planted_artefacts(n=4000)
    base, ft = _stores(tmp_path, xb, xf)
    cfg = DiffConfig(base_activations=base, finetuned_activations=ft, out=tmp_path / "out", top=3, contexts=4)
    result = run_diff(cfg, coder=coder)
    paths = write_diff_outputs(result, cfg.out)
    assert [p.name for p in paths] == ["diff.json", "latents.csv", "diff_report.html"]
    doc = json.loads((cfg.out / "diff.json").read_text())
    assert doc["n_rows"] == 4000 and len(doc["latents"]) == 6
    first = doc["latents"][1]
    for key in ("latent", "category", "relative_norm", "decoder_cosine", "freq_base", "freq_finetuned", "nu_eps",
                "nu_r"):  # fmt: skip
        assert key in first
    assert [r["category"] for r in doc["latents"]] == ["shared", "finetuned_only", "shared", "shared", "shared",
                                                       "changed"]  # fmt: skip
    assert doc["counts"]["finetuned_only"] == 1 and doc["shown"]["finetuned_only"] == [1]
    # Side by side: on the fine-tune-only latent the fine-tuned model holds the direction, the base model does not.
    ctx = doc["contexts"]["1"]
    assert len(ctx) == 4
    for c in ctx:
        i = c["center"]
        assert c["acts"][i] == pytest.approx(c["activation"])
        assert c["presence_finetuned"][i] == pytest.approx(c["activation"], abs=1e-5)
        assert c["presence_base"][i] == pytest.approx(0.0, abs=1e-5)
    rows = list(csv.DictReader((cfg.out / "latents.csv").open()))
    assert len(rows) == 6 and rows[0]["artefacts"] == "complete_shrinkage"
    html = (cfg.out / "diff_report.html").read_text()
    assert "id='latent-1'" in html and "finetuned_only" in html and "<img src='data:image/png" in html


def test_misaligned_stores_are_refused_before_work(tmp_path):
    coder, xb, xf = _planted_artefacts(n=3000)
    base, ft = _stores(tmp_path, xb, xf, shift_token=True)
    cfg = DiffConfig(base_activations=base, finetuned_activations=ft, out=tmp_path / "out")
    with pytest.raises(StoreError, match="row 123"):
        run_diff(cfg, coder=coder)


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--base-activations"):
        DiffConfig(base_activations=tmp_path / "nope", finetuned_activations=tmp_path, out=tmp_path)
    with pytest.raises(ValueError, match="both --base-model and --finetuned-model"):
        DiffConfig(
            base_activations=tmp_path, finetuned_activations=tmp_path, out=tmp_path, base_model=tmp_path
        )
    with pytest.raises(ValueError, match="not both"):
        DiffConfig(base_activations=tmp_path, finetuned_activations=tmp_path, out=tmp_path, d_sae=8,
                   expansion_factor=2)  # fmt: skip


def test_judge_explains_the_shown_latents(tmp_path):
    coder, xb, xf = _planted_artefacts(n=3000)
    base, ft = _stores(tmp_path, xb, xf)
    with JudgeServer() as server:
        cfg = DiffConfig(base_activations=base, finetuned_activations=ft, out=tmp_path / "out", top=3, contexts=6,
                         judge_url=server.url, judge_model="judge")  # fmt: skip
        result = run_diff(cfg, coder=coder)
    # The server explains with the most frequent marked token: the one planted where the latent fires.
    assert list(result.explanations) == [1] and "77" in result.explanations[1]
    write_diff_outputs(result, cfg.out)
    assert json.loads((cfg.out / "diff.json").read_text())["explanations"] == {"1": result.explanations[1]}
    assert html.escape(result.explanations[1]) in (cfg.out / "diff_report.html").read_text()


def test_cli_names_the_bad_flag(cli, tmp_path):
    out = cli("diff", "--base-activations", str(tmp_path / "missing"), "--finetuned-activations", str(tmp_path),
              "--out", str(tmp_path / "o"), check=False)  # fmt: skip
    assert out.returncode == 2 and "--base-activations" in out.stderr and "does not exist" in out.stderr
    out = cli("diff", "--base-activations", str(tmp_path), "--finetuned-activations", str(tmp_path),
              "--out", str(tmp_path / "o"), "--max-nu-eps", "0", check=False)  # fmt: skip
    assert out.returncode == 2 and "--max-nu-eps" in out.stderr


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trained_crosscoder_recovers_a_planted_diff(tmp_path, one_thread):
    """Known answer: 24 shared, 8 base-only, 8 fine-tune-only and 8 rotated planted features; the diff's own
    BatchTopK crosscoder and categories recover each kind with precision and recall >= 0.9."""
    data = PairedSyntheticActivations(PairedSyntheticConfig(d_in=32, seed=0))
    n = 32768
    xb, xf = data.sample(n)
    tok, pos = torch.arange(n) % 100, torch.stack([torch.arange(n) // 64, torch.arange(n) % 64], 1)
    write_store(tmp_path / "b", xb, token_ids=tok, positions=pos)
    write_store(tmp_path / "f", xf, token_ids=tok, positions=pos)
    cfg = DiffConfig(base_activations=tmp_path / "b", finetuned_activations=tmp_path / "f", out=tmp_path / "out",
                     k=4, d_sae=64, tokens=256 * 1200, train_batch_size=256, top=0, device="cpu")  # fmt: skip
    result = run_diff(cfg)
    saved = tmp_path / "out" / "crosscoder" / "crosscoder"
    coder = load_sae(saved)
    assert type(coder).__name__.endswith("CrossCoder") and list(coder.W_dec.shape) == [64, 2, 32]
    scores = category_recovery(
        coder.W_dec, [r["category"] for r in result.latents], data.features, data.kinds
    )
    print("category recovery:", scores, result.counts)
    for kind, s in scores.items():
        assert s["precision"] >= 0.9 and s["recall"] >= 0.9, (kind, s)
    # The saved crosscoder, given back with --crosscoder, gives the same table.
    again = run_diff(cfg.model_copy(update={"crosscoder": saved, "out": tmp_path / "again"}))
    assert again.latents == result.latents
