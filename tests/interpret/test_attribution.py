"""Logit attribution and the unembedding readout on a tiny local GPT-2, against the model's own outputs."""

from __future__ import annotations

import pytest
import torch

from saeforge.interpret.attribution import attribute, frozen_norm_map, target_token_id
from saeforge.interpret.unembed import direction_logits, final_norm, unembedding
from saeforge.models import load_model, record
from tests.interpret.helpers import relu_sae

LAST = "layers.2.resid_post"  # the last block of the tiny models: nothing but ln_f lies between it and W_U
PROMPT = "The functions of the module return"


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    return load_model(tiny_model("gpt2"))


def test_direct_effects_add_up_to_the_logit(gpt2):
    """At the last block, sum of direct effects (all latents) + b_dec + error + ln_f bias = the model's logit."""
    sae = relu_sae(64, 48, seed=2, hook=LAST, b_enc=False)
    target = " the"
    tid = target_token_id(gpt2.tokenizer, target)
    res = attribute(gpt2, sae, PROMPT, target, top=48, ablate=0)
    ids = gpt2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), record(gpt2, [LAST], stop_after_deepest=False) as acts:
        logits = gpt2.model(input_ids=ids).logits
    assert res.target_logit == pytest.approx(float(logits[0, -1, tid]), abs=1e-5)
    x = acts[LAST][0, -1].double()
    with torch.no_grad():
        z = sae.double().encode(x)
        rest = x - z @ sae.W_dec.double()  # b_dec + the SAE's error
        ln = gpt2.model.transformer.ln_f
        W_U = gpt2.model.lm_head.weight.double()[tid]
        sigma = torch.sqrt(x.var(unbiased=False) + ln.eps)
        rest_effect = float((ln.weight.double() * (rest - rest.mean()) / sigma) @ W_U)
        bias_effect = float(ln.bias.double() @ W_U)
    sae.float()
    total = sum(r.direct for r in res.rows)
    assert total == pytest.approx(res.direct_sum, abs=1e-4)
    assert total + rest_effect + bias_effect == pytest.approx(res.target_logit, abs=1e-3)
    n_active = int((z > 0).sum())
    assert len(res.rows) == n_active > 10
    directs = [r.direct for r in res.rows]
    raisers = [d for d in directs if d > 0]
    assert raisers == sorted(raisers, reverse=True)


def test_ablation_matches_manual_recompute(gpt2):
    """At the last block the logit after ablation is W_U . ln_f(x - z_i W_dec[i]) at the last position."""
    sae = relu_sae(64, 48, seed=2, hook=LAST, b_enc=False)
    target = " the"
    tid = target_token_id(gpt2.tokenizer, target)
    res = attribute(gpt2, sae, PROMPT, target, top=3, ablate=4)
    ablated = [r for r in res.rows if r.ablation is not None]
    assert len(ablated) == 4
    ids = gpt2.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad(), record(gpt2, [LAST], stop_after_deepest=False) as acts:
        gpt2.model(input_ids=ids)
    x = acts[LAST][0, -1]
    with torch.no_grad():
        z = sae.encode(x)
        for r in ablated:
            y = gpt2.model.transformer.ln_f(x - z[r.latent] * sae.W_dec[r.latent])
            expect = float(gpt2.model.lm_head(y)[tid]) - res.target_logit
            assert r.ablation == pytest.approx(expect, abs=1e-4)
            # Removing a latent's push reverses the sign of its (here exact up to the norm) direct effect.
            assert (r.ablation < 0) == (r.direct > 0)


def test_rmsnorm_frozen_map_and_unembedding_readout(tiny_model):
    llama = load_model(tiny_model("llama"))
    norm = final_norm(llama.model)
    r = torch.randn(64)
    v = torch.randn(64)
    # Frozen-scale RMSNorm: N(v) = g * v / rms(r); its value at v = r is the norm itself.
    M = frozen_norm_map(norm, r)
    with torch.no_grad():
        torch.testing.assert_close(r @ M, norm(r[None])[0], rtol=1e-5, atol=1e-5)
        # Readout ranking equals the plain formula g * d @ W_U for a planted direction.
        W_U = unembedding(llama.model)
        d = W_U[:, 17] / norm.weight
        logits = direction_logits(llama.model, torch.stack([d, -d]))
    assert int(logits[0].argmax()) == int((W_U[:, 17] @ W_U).argmax())
    assert int(logits[1].argmin()) == int(logits[0].argmax())
    assert torch.allclose(v @ frozen_norm_map(None, r), v)


def test_multi_token_target_is_rejected(gpt2):
    with pytest.raises(ValueError, match="single token"):
        target_token_id(gpt2.tokenizer, " documentation of modules")


def test_interpret_on_model_activations_reads_logits_and_tokens(gpt2):
    """Real activations of a tiny GPT-2: decoded windows match the tokenizer; promoted tokens match a float64
    LayerNorm-then-unembed reference restricted to the tokenizer's vocabulary."""
    from saeforge.interpret import Batch, interpret, tokenizer_decode
    from saeforge.models import run_hooks

    hook = "layers.1.resid_post"
    texts = [
        "The module defines functions and classes.",
        "Return the value of the named attribute of object.",
    ]
    batches, contexts = [], []
    for s, text in enumerate(texts):
        ids = gpt2.tokenizer(text, return_tensors="pt")["input_ids"]
        x = run_hooks(gpt2, ids, hooks=[hook])[hook][0]
        n = ids.shape[1]
        pos = torch.stack([torch.full((n,), s), torch.arange(n)], 1)
        batches.append(Batch(x, ids[0], pos))
        contexts.append(ids[0])
    sae = relu_sae(64, 16, seed=4, hook=hook, b_enc=False)
    vocab = len(gpt2.tokenizer)
    decode = tokenizer_decode(gpt2.tokenizer)
    res = interpret(sae, batches, [2, 9], k=3, model=gpt2.model, decode=decode, vocab_size=vocab)
    ln, W_U = gpt2.model.transformer.ln_f, gpt2.model.lm_head.weight.detach().double()[:vocab].T
    gamma = ln.weight.detach().double()
    for rec in res.latents:
        for c in rec.top:
            assert c.token_ids == contexts[c.seq][c.start : c.start + len(c.token_ids)].tolist()
            assert c.tokens == [gpt2.tokenizer.decode([t]) for t in c.token_ids]
        d = sae.W_dec.detach()[rec.latent].double()
        ref = (gamma * (d - d.mean()) / torch.sqrt(d.var(unbiased=False) + ln.eps)) @ W_U
        assert [t.token_id for t in rec.promoted] == ref.topk(10).indices.tolist()
        assert [t.token_id for t in rec.suppressed] == (-ref).topk(10).indices.tolist()
        assert rec.promoted[0].value == pytest.approx(float(ref.max()), rel=1e-4)
