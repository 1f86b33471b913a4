"""eval/sites.py: target FVU, per-site FVU, and the transcoder spliced in place of the MLP's output."""

from __future__ import annotations

import pytest
import torch

from saeforge.eval.downstream import contexts_from_source
from saeforge.eval.sites import site_metrics, target_metrics, transcoder_downstream
from saeforge.sae import create_training_sae


def _naive_fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    y, y_hat = y.double(), y_hat.detach().double()
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _random(kind: str, **kw):
    sae = create_training_sae(
        dict(architecture="standard", kind=kind, d_sae=24, sparsity_coefficient=1.0, **kw)
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    return sae


def test_target_fvu_equals_a_float64_reference_with_the_skip():
    tc = _random("transcoder", d_in=6, d_out=10, skip_connection=True).export(1.0)
    x, y = torch.randn(300, 6), torch.randn(300, 10)
    m = target_metrics(tc, zip(x.split(64), y.split(64), strict=True))
    assert m["fvu"] == pytest.approx(_naive_fvu(y, tc.decode(tc.encode(x)) + x @ tc.W_skip.T), rel=1e-9)
    with torch.no_grad():
        assert m["tokens"] == 300 and m["l0"] == pytest.approx(
            float((tc.encode(x) > 0).sum(1).double().mean())
        )


def test_crosscoder_fvu_per_site_equals_a_float64_reference():
    cc = _random("crosscoder", d_in=5, n_sites=3, sites=["a", "b", "c"]).export(1.0)
    x = torch.randn(200, 3, 5)
    m = site_metrics(cc, [tuple(b.unbind(1)) for b in x.split(50)])
    x_hat = cc(x)
    for s, name in enumerate("abc"):
        assert m[f"fvu.{name}"] == pytest.approx(_naive_fvu(x[:, s], x_hat[:, s]), rel=1e-9)
    assert m["fvu"] == pytest.approx(_naive_fvu(x.flatten(1), x_hat.flatten(1)), rel=1e-9)


@pytest.fixture(scope="module")
def gpt2(tiny_model):
    from saeforge.models import load_model

    loaded = load_model(tiny_model("gpt2"))
    return loaded, contexts_from_source("builtin:heldout", loaded.tokenizer, 32, 4)


def test_spliced_transcoder_equals_a_hand_written_mlp_hook(gpt2):
    """CE and KL with the MLP of layer 1 replaced by the transcoder, against a forward hook on that MLP written
    here (its output := transcoder(its input) at non-special positions) and next-token CE/KL computed naively."""
    import torch.nn.functional as F

    loaded, (tokens, special) = gpt2
    d = loaded.d_model
    tc = _random("transcoder", d_in=d, d_out=d).export(4.0)
    got = transcoder_downstream(tc, loaded, tokens, special, layer=1, mean_output=torch.zeros(d))
    mlp = loaded.model.transformer.h[1].mlp

    def hooked_logits(tok, spec):
        def hook(module, inp, out):
            return torch.where(spec[..., None], out, tc(inp[0]))

        handle = mlp.register_forward_hook(hook)
        try:
            return loaded.model(input_ids=tok).logits
        finally:
            handle.remove()

    ce = kl = n = 0.0
    with torch.no_grad():
        for tok, spec in zip(tokens.split(3), special.split(3), strict=True):
            valid = ~spec[:, :-1] & ~spec[:, 1:]
            clean = F.log_softmax(loaded.model(input_ids=tok).logits[:, :-1].double(), -1)
            spliced = F.log_softmax(hooked_logits(tok, spec)[:, :-1].double(), -1)
            ce += float(-spliced.gather(-1, tok[:, 1:, None])[..., 0][valid].sum())
            kl += float((clean.exp() * (clean - spliced)).sum(-1)[valid].sum())
            n += float(valid.sum())
    assert got["ce_loss_with_transcoder"] == pytest.approx(ce / n, rel=1e-5)
    assert got["kl_div_with_transcoder"] == pytest.approx(kl / n, rel=1e-4, abs=1e-6)
    # a zero "mean" is the zero ablation, and ablating the MLP changes the model's predictions
    assert got["ce_loss_mean_ablation"] == pytest.approx(got["ce_loss_zero_ablation"], rel=1e-9)
    assert got["kl_div_zero_ablation"] > 0 and got["ce_loss_zero_ablation"] != got["ce_loss_clean"]
