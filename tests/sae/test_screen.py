"""The certified bf16 screen for TopK equals the exact fp32 TopK: indices, values and gradients."""

from __future__ import annotations

import torch

from saeforge.sae import kernels
from saeforge.sae.screen import exact_topk, screened_topk


def _problem(seed: int, B: int = 96, d_in: int = 48, d_sae: int = 1024):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_sae, d_in, generator=g).t()  # column-major, as saeforge stores W_enc
    x = torch.randn(B, d_in, generator=g) * 3
    # Rows with a few large pre-activations (certifiable) and rows of near-ties (not): both paths run.
    x[: B // 2] += 4 * W[:, :4].sum(1)
    b = torch.randn(d_sae, generator=g) * 0.1
    return x, W, b


def _sorted(indices, values):
    order = indices.argsort(1)
    return indices.gather(1, order), values.gather(1, order)


def _float64_topk(x, W, b, k):
    return (x.double() @ W.double() + b.double()).topk(k, dim=1).indices


def test_screen_selects_exactly_the_fp32_topk_and_counts_fallbacks():
    k = 8
    for seed in range(3):
        x, W, b = _problem(seed)
        got, ref = screened_topk(x, W, b, k, margin=2), exact_topk(x, W, b, k)
        gi, gv = _sorted(got.indices, got.values)
        ri, rv = _sorted(ref.indices, ref.values)
        assert torch.equal(gi, ri)
        assert torch.allclose(gv, rv, rtol=1e-5, atol=1e-5)
        assert torch.equal(gi, _float64_topk(x, W, b, k).sort(1).values)
        assert 0 < got.fallback < x.shape[0]  # certified rows and fallback rows both occur


def test_exact_ties_fall_back_to_exact():
    x, W, b = _problem(0)
    W, b = W.clone(), b.clone()
    W[:, 1], b[1] = W[:, 0], b[0]  # latents 0 and 1 tie in every row, and lead every row:
    x = 10 * W[:, 0] + 0.1 * x
    got = screened_topk(x, W, b, 1)
    assert got.fallback == x.shape[0]
    assert got.near_ties == x.shape[0]  # the screen itself held: only the tie, fp32's own, sent them back
    assert torch.equal(got.values, exact_topk(x, W, b, 1).values)


def test_screened_selection_has_the_dense_gradients():
    k = 8
    x, W0, b0 = _problem(1)
    G = torch.randn(x.shape[0], W0.shape[1], generator=torch.Generator().manual_seed(9))

    def grads(fast: bool):
        xg, W, b = x.clone().requires_grad_(), W0.clone().requires_grad_(), b0.clone().requires_grad_()
        if fast:
            sel = screened_topk(xg.detach(), W.detach(), b.detach(), k)
            vals = kernels.selected_preacts(xg, W, b, sel.values, sel.indices)
            idx = sel.indices
        else:
            pre = xg @ W + b
            idx = pre.topk(k, dim=1).indices
            vals = pre.gather(1, idx)
        (vals.relu() * G.gather(1, idx)).sum().backward()
        return xg.grad, W.grad, b.grad

    for fast, slow in zip(grads(True), grads(False), strict=True):
        assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5)


def test_topk_training_with_the_screen_equals_exact_training(tmp_path):
    from saeforge.sae import create_training_sae
    from saeforge.sae.base import TrainStepInput

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 16, generator=g) + 1.0 for _ in range(3)]
    models = []
    for screen in ("off", "bf16"):
        torch.manual_seed(0)
        m = create_training_sae({"architecture": "topk", "d_in": 16, "d_sae": 256, "k": 4, "screen": screen})
        m.init_from_data(xs[0])
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        for x in xs:
            out = m.training_forward(TrainStepInput(x=x, dead_mask=torch.zeros(256, dtype=torch.bool)))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
        models.append((m, out))
    (a, out_a), (b, out_b) = models
    assert torch.equal(out_a.fired, out_b.fired)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-6)
