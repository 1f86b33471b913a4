"""Downstream scores on a toy model whose hook is its token embedding, against a naive float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeforge.eval import downstream_scores
from saeforge.eval.downstream import ablations, sae_replacement

V, D, T = 13, 6, 10
SPECIAL = 0  # token id 0 plays BOS


class ToyModel:
    """act = emb[tokens] (the hook); causal: logits = causal running mean of act @ head; encoder: tanh(act + mean)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(V, D, generator=g) + 0.5
        self.head = torch.randn(D, V, generator=g) * 2
        self.calls = []

    def forward_causal(self, tokens, replace):
        act = self.emb[tokens]
        if replace is not None:
            act = replace(act)
        self.calls.append(act)
        running = act.cumsum(1) / torch.arange(1, act.shape[1] + 1)[None, :, None]
        return running @ self.head

    def forward_encoder(self, tokens, replace):
        act = self.emb[tokens]
        if replace is not None:
            act = replace(act)
        return torch.tanh(act + act.mean(1, keepdim=True))


def contexts(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, V, (n, T), generator=g)
    tokens[:, 0] = SPECIAL
    tokens[::3, 5] = SPECIAL
    return tokens, tokens == SPECIAL


@torch.no_grad()
def naive_ce_kl(model, tokens, special, replace):
    """Per scored position, in float64 with explicit loops: (mean CE clean, mean CE replaced, mean KL)."""
    clean = model.forward_causal(tokens, None).double().numpy()
    keep = special[..., None]
    new = model.forward_causal(tokens, lambda a: torch.where(keep, a, replace(a))).double().numpy()
    ce_c, ce_r, kl, n = 0.0, 0.0, 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(T - 1):
            if special[b, t] or special[b, t + 1]:
                continue
            lc = clean[b, t] - np.log(np.exp(clean[b, t]).sum())
            lr = new[b, t] - np.log(np.exp(new[b, t]).sum())
            y = int(tokens[b, t + 1])
            ce_c, ce_r, n = ce_c - lc[y], ce_r - lr[y], n + 1
            kl += (np.exp(lc) * (lc - lr)).sum()
    return ce_c / n, ce_r / n, kl / n


def test_exact_sae_scores_one(saes):
    model = ToyModel()
    tokens, special = contexts()
    mean = model.emb[tokens[~special]].double().mean(0)
    reps = {"sae": sae_replacement(saes.identity(D)), **ablations(mean)}
    m = downstream_scores(model.forward_causal, "causal", tokens, special, reps, batch_size=5)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_loss_score_mean_ablation"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_delta"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)


def test_zero_sae_scores_zero_against_zero_ablation(saes):
    model = ToyModel()
    tokens, special = contexts()
    mean = model.emb[tokens[~special]].double().mean(0)
    reps = {"sae": sae_replacement(saes.zero(D, 2 * D)), **ablations(mean)}
    m = downstream_scores(model.forward_causal, "causal", tokens, special, reps, batch_size=4)
    assert m["ce_loss_score"] == pytest.approx(0.0, abs=1e-9)
    assert m["kl_div_score"] == pytest.approx(0.0, abs=1e-9)
    assert m["ce_loss_zero_ablation"] != pytest.approx(m["ce_loss_clean"])  # the score is well defined


def test_scores_match_naive_loop(saes):
    model = ToyModel(seed=3)
    tokens, special = contexts(seed=4)
    sae = saes.random(D, 3 * D, seed=5)
    mean = model.emb[tokens[~special]].double().mean(0)
    reps = {"sae": sae_replacement(sae), **ablations(mean)}
    m = downstream_scores(model.forward_causal, "causal", tokens, special, reps, batch_size=5)
    fn = reps["sae"]
    ce_clean, ce_sae, kl_sae = naive_ce_kl(model, tokens, special, fn)
    _, ce_zero, kl_zero = naive_ce_kl(model, tokens, special, torch.zeros_like)
    _, ce_mean, kl_mean = naive_ce_kl(model, tokens, special, lambda a: mean.float().expand_as(a))
    assert m["ce_loss_clean"] == pytest.approx(ce_clean, rel=1e-5)
    assert m["ce_loss_with_sae"] == pytest.approx(ce_sae, rel=1e-5)
    assert m["kl_div_with_sae"] == pytest.approx(kl_sae, rel=1e-4)
    assert m["ce_loss_score"] == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean), rel=1e-4)
    assert m["kl_div_score"] == pytest.approx((kl_zero - kl_sae) / kl_zero, rel=1e-4)
    assert m["ce_loss_score_mean_ablation"] == pytest.approx(
        (ce_mean - ce_sae) / (ce_mean - ce_clean), rel=1e-4
    )
    assert m["kl_div_score_mean_ablation"] == pytest.approx((kl_mean - kl_sae) / kl_mean, rel=1e-4)
    assert m["downstream_tokens"] == int((~special[:, :-1] & ~special[:, 1:]).sum())


def test_special_tokens_keep_their_activation(saes):
    model = ToyModel()
    tokens, special = contexts(n=4)
    reps = {"sae": sae_replacement(saes.zero(D, D)), **ablations(torch.zeros(D))}
    downstream_scores(model.forward_causal, "causal", tokens, special, reps)
    spliced = model.calls[1]  # the "sae" run: zero reconstruction everywhere except special tokens
    assert torch.equal(spliced[special], model.emb[tokens[special]])
    assert (spliced[~special] == 0).all()


def test_encoder_pooled_cosine(saes):
    model = ToyModel()
    tokens, special = contexts()
    mean = model.emb[tokens[~special]].double().mean(0)
    exact = downstream_scores(
        model.forward_encoder,
        "encoder",
        tokens,
        special,
        {"sae": sae_replacement(saes.identity(D)), **ablations(mean)},
    )
    assert exact["pooled_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert exact["pooled_cosine_score"] == pytest.approx(1.0, abs=1e-6)
    assert "ce_loss_score" not in exact
    # naive pooled cosine of the zero ablation: mean over non-special positions, then cosine per context
    clean = model.forward_encoder(tokens, None).double()
    zeroed = model.forward_encoder(
        tokens, lambda a: torch.where(special[..., None], a, torch.zeros_like(a))
    ).double()
    cos = []
    for b in range(tokens.shape[0]):
        keep = ~special[b]
        pc, pz = clean[b][keep].mean(0), zeroed[b][keep].mean(0)
        cos.append(float(pc @ pz / (pc.norm() * pz.norm())))
    assert exact["pooled_cosine_zero_ablation"] == pytest.approx(np.mean(cos), rel=1e-6)


def test_bad_kind_is_refused(saes):
    tokens, special = contexts(n=2)
    with pytest.raises(ValueError, match="kind"):
        downstream_scores(ToyModel().forward_causal, "seq2seq", tokens, special, {})


def test_baseline_cache_skips_ablation_passes(saes):
    model = ToyModel()
    tokens, special = contexts()
    mean = model.emb[tokens[~special]].double().mean(0)
    cache = {}
    first, second = saes.random(D, 3 * D, seed=1), saes.random(D, 3 * D, seed=2)
    want = downstream_scores(
        model.forward_causal,
        "causal",
        tokens,
        special,
        {"sae": sae_replacement(second), **ablations(mean)},
        5,
    )
    for sae in (first, second):
        model.calls.clear()
        reps = {"sae": sae_replacement(sae), **ablations(mean)}
        got = downstream_scores(model.forward_causal, "causal", tokens, special, reps, 5, cache=cache)
    assert len(model.calls) == 2 * 3  # clean + sae per batch of 5 contexts (12 contexts: 3 batches)
    assert got == want
