"""Downstream metrics through real (tiny, random) Hugging Face models with the reconstruction spliced in."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.eval import EvalConfig, evaluate, run_eval
from saeforge.eval.downstream import contexts_from_source, hook_activations
from saeforge.text import builtin_documents

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    from saeforge.models import load_model

    loaded = load_model(tiny_model("gpt2"))
    tokens, special = contexts_from_source("builtin:heldout", loaded.tokenizer, 32, 6)
    acts = torch.cat(list(hook_activations(loaded, HOOK, tokens, special)))
    return loaded, (tokens, special), acts


def test_exact_sae_recovers_everything(gpt2, saes):
    loaded, contexts, acts = gpt2
    assert contexts[1][:, 0].all()  # BOS starts every context and is masked
    m = evaluate(saes.identity(loaded.d_model), acts.split(64), model=loaded, hook=HOOK, contexts=contexts)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_score_mean_ablation"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_delta"] == pytest.approx(0.0, abs=1e-5)
    assert m["ce_loss_zero_ablation"] != pytest.approx(m["ce_loss_clean"])


def test_zero_sae_scores_zero(gpt2, saes):
    loaded, contexts, acts = gpt2
    m = evaluate(saes.zero(loaded.d_model, 32), [acts], model=loaded, hook=HOOK, contexts=contexts)
    assert m["ce_loss_score"] == pytest.approx(0.0, abs=1e-9)
    assert m["kl_div_score"] == pytest.approx(0.0, abs=1e-9)
    assert m["ce_loss_with_sae"] == pytest.approx(m["ce_loss_zero_ablation"], rel=1e-9)


def test_random_sae_lies_between(gpt2, saes):
    loaded, contexts, acts = gpt2
    m = evaluate(
        saes.random(loaded.d_model, 256, seed=3),
        [acts],
        model=loaded,
        hook=HOOK,
        contexts=contexts,
        extra={"heldout": contexts},
    )
    assert m["kl_div_with_sae"] > 0 and m["fvu"] > 0.01
    # the extra corpus is the same text: its activations give the same reconstruction metrics
    assert m["extra.heldout.tokens"] == m["tokens"]
    assert m["extra.heldout.fvu"] == pytest.approx(m["fvu"], rel=1e-6)
    assert m["extra.heldout.ce_loss_score"] == pytest.approx(m["ce_loss_score"], rel=1e-9)


def test_encoder_pooled_cosine(tiny_model, saes):
    from saeforge.models import load_model

    loaded = load_model(tiny_model("bert"))
    tokens, special = contexts_from_source("builtin:heldout", loaded.tokenizer, 32, 4)
    acts = torch.cat(list(hook_activations(loaded, HOOK, tokens, special)))
    exact = evaluate(
        saes.identity(loaded.d_model), [acts], model=loaded, hook=HOOK, contexts=(tokens, special)
    )
    assert exact["pooled_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert exact["pooled_cosine_score"] == pytest.approx(1.0, abs=1e-5)
    assert "ce_loss_score" not in exact
    zero = evaluate(
        saes.zero(loaded.d_model, 16), [acts], model=loaded, hook=HOOK, contexts=(tokens, special)
    )
    assert zero["pooled_cosine_score"] == pytest.approx(0.0, abs=1e-9)


def test_run_eval_on_a_captured_store_uses_its_contexts(tiny_model, saes, store_tools, tmp_path):
    from saeforge.activations import CaptureConfig, capture

    model = tiny_model("gpt2")
    cap = CaptureConfig(
        model=str(model), hooks=[HOOK], data="builtin:heldout", tokens=500, context_size=32, out=tmp_path
    )
    store = capture(cap)[HOOK]
    sae = store_tools.save_sae(saes.identity(64), tmp_path / "identity", hook=HOOK)
    [m] = run_eval(EvalConfig(saes=[sae], activations=store, model=model, contexts=3))
    assert m["tokens"] == 500 and m["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert m["downstream_tokens"] > 0 and m["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert m["verdict"] == "deceptively-good"


def test_eval_cli_with_model_and_data(gpt2, tiny_model, saes, store_tools, tmp_path, cli):
    loaded, _, acts = gpt2
    store = store_tools.write_store(tmp_path / "store", acts, hook=HOOK)
    sae = store_tools.save_sae(saes.identity(loaded.d_model), tmp_path / "identity", hook=HOOK)
    model = tiny_model("gpt2")
    # a store that keeps neither contexts nor a corpus name needs --data
    with pytest.raises(ValueError, match="--data"):
        run_eval(EvalConfig(saes=[sae], activations=store, model=model))
    out, text = tmp_path / "out", tmp_path / "heldout.txt"
    text.write_text("\n\n".join(builtin_documents("heldout")[:40]))  # the subprocess need not rebuild builtin
    args = ["--model", model, "--data", text, "--contexts", "2", "--context-size", "32", "--out", out]
    cli("eval", "--sae", sae, "--activations", store, *args)
    metrics = json.loads((out / "identity" / "metrics.json").read_text())
    assert metrics["kl_div_score"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
