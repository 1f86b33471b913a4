"""`compat="saelens"`: SAELens's and SAEBench's metric definitions, checked against values computed by hand."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from saeforge.eval import evaluate
from saeforge.eval.downstream import contexts_from_source

HOOK = "layers.1.resid_post"


@torch.no_grad()
def _by_hand(sae, batches):
    """sae_lens.evals' reconstruction scalars, in float64 loops over tokens and batches."""
    mse, cos, ratio, legacy, ratios = [], [], [], [], []
    for x in batches:
        x = x.double()
        x_hat = sae(x.float()).double()
        mean = sum(x) / len(x)
        for row, row_hat in zip(x, x_hat, strict=True):
            err = float(((row - row_hat) ** 2).sum())
            mse.append(err)
            cos.append(float(row @ row_hat / (row.norm() * row_hat.norm())))
            ratio.append(float(row_hat.norm() / row.norm()))
            legacy.append(1 - err / float(((row - mean) ** 2).sum()))
        sq = sum(float(r @ r) for r in x_hat) / len(x)
        dot = sum(float(a @ b) for a, b in zip(x, x_hat, strict=True)) / len(x)
        ratios.append(sq / dot)
    allx = torch.cat([b.double() for b in batches])
    allhat = torch.cat([sae(b).double() for b in batches])
    ev = 1 - float(((allx - allhat) ** 2).sum()) / float(((allx - allx.mean(0)) ** 2).sum())
    n = len(mse)
    return {
        "saelens.mse": sum(mse) / n,
        "saelens.cossim": sum(cos) / n,
        "saelens.l2_ratio": sum(ratio) / n,
        "saelens.explained_variance_legacy": sum(legacy) / n,
        "saelens.relative_reconstruction_bias": sum(ratios) / len(ratios),
        "saelens.explained_variance": ev,
    }


def test_reconstruction_metrics_follow_saelens_definitions(saes, acts):
    sae = saes.random(16, 48, seed=2)
    x = acts(300, 16)
    batches = [x[:50], x[50:200], x[200:]]  # unequal eval batches: batch means and batch ratios differ
    m = evaluate(sae, batches, compat="saelens")
    expected = _by_hand(sae, batches)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-5), key
    # The same data, saeforge's own definitions, unchanged beside them:
    assert m["saelens.mse"] == pytest.approx(m["mse"] * 16, rel=1e-5)
    assert m["saelens.explained_variance"] == pytest.approx(m["explained_variance"], rel=1e-5)
    assert m["saelens.relative_reconstruction_bias"] != pytest.approx(m["shrinkage"], rel=1e-4)
    assert "saelens.mse" not in evaluate(sae, batches)
    with pytest.raises(ValueError, match="compat='sae_lens' is not one of saeforge, saelens"):
        evaluate(sae, batches, compat="sae_lens")


def test_ce_recovered_scores_special_tokens_as_saelens_does(tiny_model, saes):
    from saeforge.models import load_model, run_hooks, splice

    torch.set_num_threads(1)
    loaded = load_model(tiny_model("gpt2"))
    tokens, special = contexts_from_source("builtin:heldout", loaded.tokenizer, 24, 4)
    assert special[:, 0].all()
    x = run_hooks(loaded, tokens, hooks=[HOOK])[HOOK].reshape(-1, loaded.d_model)
    sae = saes.random(loaded.d_model, 128, seed=1)
    m = evaluate(sae, [x], model=loaded, hook=HOOK, contexts=(tokens, special), compat="saelens")

    def ce(replace):
        with torch.no_grad(), splice(loaded, HOOK, replace) if replace else contextlib.nullcontext():
            logits = loaded.model(input_ids=tokens).logits
        return float(F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten()))

    clean, with_sae, zero = ce(None), ce(lambda a: sae(a)), ce(torch.zeros_like)
    assert m["saelens.ce_loss_clean"] == pytest.approx(clean, rel=1e-5)
    assert m["saelens.ce_loss_with_sae"] == pytest.approx(with_sae, rel=1e-5)
    assert m["saelens.ce_loss_zero_ablation"] == pytest.approx(zero, rel=1e-5)
    assert m["saelens.ce_loss_score"] == pytest.approx((zero - with_sae) / (zero - clean), rel=1e-4)
    assert m["saelens.ce_loss_score"] != pytest.approx(m["ce_loss_score"], rel=1e-4)


def test_eval_cli_offers_compat_and_refuses_an_unknown_mode(cli, tmp_path):
    assert "--compat" in cli("eval", "--help").stdout
    bad = cli(
        "eval", "--sae", tmp_path, "--activations", tmp_path, "--out", tmp_path, "--compat", "x", check=False
    )
    assert bad.returncode != 0 and "saeforge, saelens" in bad.stderr
