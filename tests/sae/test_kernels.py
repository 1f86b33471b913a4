"""The fast TopK-family kernels equal their eager references: values and gradients, float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from saeforge.sae import kernels


def _inputs(B=24, d_in=12, d_sae=40, w=5, dtype=torch.float32, column_major=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=g, dtype=dtype)
    if column_major:
        W_enc = torch.randn(d_sae, d_in, generator=g, dtype=dtype).t()
    else:
        W_enc = torch.randn(d_in, d_sae, generator=g, dtype=dtype)
    b_enc = torch.randn(d_sae, generator=g, dtype=dtype)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=dtype)
    # repeated latents across tokens (only 2 * w distinct ones in play) and within a row (the padding pattern)
    idx = torch.randint(0, 2 * w, (B, w), generator=g)
    idx[:, -1] = idx[:, 0]
    idx[::3] = torch.randint(0, d_sae, (len(idx[::3]), w), generator=g)
    return x, W_enc, b_enc, W_dec, idx


def _grads(fn, tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(1)
    out.backward(torch.randn(out.shape, generator=g, dtype=out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


def test_module_names_point_at_fast_paths():
    assert kernels.gather_preacts is kernels.gather_preacts_fast
    assert kernels.sparse_decode is kernels.sparse_decode_fast
    assert kernels.topk_select is kernels.topk_select_fast


@pytest.mark.parametrize("column_major", [False, True])
def test_gather_preacts_matches_eager(column_major):
    x, W_enc, b_enc, _, idx = _inputs(column_major=column_major)
    pre = x @ W_enc + b_enc

    def fast(x, W_enc, b_enc):
        return kernels.gather_preacts_fast(x, W_enc, b_enc, (x @ W_enc + b_enc).detach(), idx)

    def eager(x, W_enc, b_enc):
        return kernels.gather_preacts_eager(x, W_enc, b_enc, pre, idx)

    out_f, grads_f = _grads(fast, [x, W_enc, b_enc])
    out_e, grads_e = _grads(eager, [x, W_enc, b_enc])
    torch.testing.assert_close(out_f, out_e)
    for name, gf, ge in zip(["x", "W_enc", "b_enc"], grads_f, grads_e, strict=True):
        torch.testing.assert_close(gf, ge, msg=lambda m, name=name: f"grad {name}: {m}")
    # W_enc's gradient is zero outside the selected columns
    unselected = torch.ones(W_enc.shape[1], dtype=torch.bool)
    unselected[idx.unique()] = False
    assert grads_f[1][:, unselected].abs().max() == 0


def test_gather_preacts_grad_layout_follows_parameter():
    for column_major in (False, True):
        x, W_enc, b_enc, _, idx = _inputs(column_major=column_major)
        W = torch.nn.Parameter(W_enc)
        pre = (x @ W + b_enc).detach()
        kernels.gather_preacts(x, W, b_enc, pre, idx).sum().backward()
        assert W.grad.stride() == W.stride()


def test_sparse_decode_matches_eager_with_masked_zeros():
    _, _, _, W_dec, idx = _inputs()
    vals = torch.randn(idx.shape).relu()
    vals[:, -2:] = 0.0  # masked slots, as BatchTopK / AuxK padding produce
    out_f, grads_f = _grads(lambda v, W: kernels.sparse_decode_fast(idx, v, W), [vals, W_dec])
    out_e, grads_e = _grads(lambda v, W: kernels.sparse_decode_eager(idx, v, W), [vals, W_dec])
    torch.testing.assert_close(out_f, out_e)
    torch.testing.assert_close(grads_f[0], grads_e[0], msg=lambda m: f"grad vals: {m}")
    torch.testing.assert_close(grads_f[1], grads_e[1], msg=lambda m: f"grad W_dec: {m}")


def test_sparse_decode_against_naive_loop():
    _, _, _, W_dec, idx = _inputs(dtype=torch.float64)
    vals = torch.randn(idx.shape, dtype=torch.float64)
    expected = torch.zeros(idx.shape[0], W_dec.shape[1], dtype=torch.float64)
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            expected[b] += vals[b, j] * W_dec[idx[b, j]]
    torch.testing.assert_close(kernels.sparse_decode(idx, vals, W_dec), expected)


def test_gradcheck_float64():
    x, W_enc, b_enc, W_dec, idx = _inputs(B=5, d_in=4, d_sae=9, w=3, dtype=torch.float64)
    pre = (x @ W_enc + b_enc).detach()

    def gp(x, W_enc, b_enc):
        # pre must follow the perturbed inputs for finite differences to see the forward change
        return kernels.gather_preacts_fast(x, W_enc, b_enc, x @ W_enc + b_enc, idx)

    leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc)]
    assert torch.autograd.gradcheck(gp, leaves)
    vals = pre.gather(1, idx).clone().requires_grad_()
    W = W_dec.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, W: kernels.sparse_decode_fast(idx, v, W), [vals, W])


def test_topk_pipeline_grads_match_dense_reference():
    """A whole TopK forward/backward through the kernels equals the dense autograd expression (float64)."""
    x, W_enc, b_enc, W_dec, _ = _inputs(B=32, d_in=16, d_sae=2048, w=8, dtype=torch.float64)
    k = 8
    fast_leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc, W_dec)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, W_enc, b_enc, W_dec)]

    xf, Wf, bf, Df = fast_leaves
    pre = (xf @ Wf + bf).detach()
    vals, idx = kernels.topk_select(pre, k)
    acts = kernels.gather_preacts(xf, Wf, bf, pre, idx).relu()
    loss_f = (kernels.sparse_decode(idx, acts, Df) - xf).pow(2).sum()
    loss_f.backward()

    xr, Wr, br, Dr = ref_leaves
    dense = xr @ Wr + br
    mask = torch.zeros_like(dense, dtype=torch.bool).scatter_(1, dense.topk(k, dim=1).indices, True)
    z = torch.where(mask, dense, 0.0).relu()
    loss_r = (z @ Dr - xr).pow(2).sum()
    loss_r.backward()

    torch.testing.assert_close(loss_f, loss_r)
    for name, a, b in zip(["x", "W_enc", "b_enc", "W_dec"], fast_leaves, ref_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m, name=name: f"{name}: {m}")


def _check_topk(pre, k):
    values, indices = kernels.topk_select_fast(pre, k)
    ref_values, _ = kernels.topk_select_eager(pre, k)
    torch.testing.assert_close(values.sort(1).values, ref_values.sort(1).values)
    torch.testing.assert_close(pre.gather(1, indices), values)
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "indices repeat within a row"


def test_topk_select_random_rows():
    g = torch.Generator().manual_seed(0)
    assert (kernels._group_size(1024, 8), kernels._group_size(1000, 8), kernels._group_size(100, 8)) == (
        16,
        8,
        0,
    )
    _check_topk(torch.randn(64, 1024, generator=g), 8)
    _check_topk(torch.randn(64, 1000, generator=g), 8)
    _check_topk(torch.randn(64, 4096, generator=g), 16)
    _check_topk(torch.randn(8, 24576, generator=g) + torch.randn(24576, generator=g), 64)


def test_topk_select_crowded_groups_ties_and_masks():
    g = torch.Generator().manual_seed(1)
    d_sae, k = 2048, 8
    groups = d_sae // kernels._group_size(d_sae, k)
    pre = torch.randn(40, d_sae, generator=g)
    # rows 0-9: one strided group holds the 6 largest entries (forces the exact fallback)
    for r in range(10):
        pre[r, r + groups * torch.arange(6)] = 10.0 + torch.rand(6, generator=g)
    # rows 10-19: ties at the boundary
    pre[10:20, :20] = 5.0
    # rows 20-29: most entries masked to -inf (AuxK over few dead latents)
    pre[20:30, 100:] = float("-inf")
    # rows 30-39: group maxima tie with second entries
    pre[30:40, 3] = pre[30:40, 3 + groups] = 7.0
    _check_topk(pre, k)


def test_topk_select_narrow_rows_use_reference():
    pre = torch.randn(4, 50)
    values, indices = kernels.topk_select(pre, 5)
    torch.testing.assert_close(values.sort(1).values, pre.topk(5, dim=1).values.sort(1).values)


def test_topk_sae_step_matches_dense_reference_with_auxk():
    """The TopK architecture's sparse step (selection, AuxK over dead latents, decoder-gradient projection)
    equals the dense float64 expression of Gao et al.'s loss."""
    from saeforge.sae import create_training_sae
    from saeforge.sae.base import TrainStepInput

    d_in, d_sae, k, k_aux, B = 16, 2048, 8, 6, 32
    sae = create_training_sae(
        {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "k_aux": k_aux, "b_dec_init": "mean"}
    ).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, d_in, generator=g, dtype=torch.float64) + 1.0
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g, dtype=torch.float64))
        sae.b_dec.copy_(torch.randn(d_in, generator=g, dtype=torch.float64) * 0.1)
    dead = torch.rand(d_sae, generator=g) < 0.3
    out = sae.training_forward(TrainStepInput(x=x, dead_mask=dead))
    out.loss.backward()
    sae.before_optimizer_step()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}

    params = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    top = pre.topk(k, dim=1).indices
    z = torch.zeros_like(pre).scatter(1, top, pre.gather(1, top)).relu()
    x_hat = z @ params["W_dec"] + params["b_dec"]
    mse = (x_hat - x).pow(2).sum(-1).mean()
    masked = pre.masked_fill(~dead, float("-inf"))
    aux_idx = masked.topk(k_aux, dim=1).indices
    z_aux = torch.zeros_like(pre).scatter(1, aux_idx, pre.gather(1, aux_idx)).relu()
    auxk = (x - x_hat.detach() - z_aux @ params["W_dec"]).pow(2).sum(-1).mean() / 32
    (mse + auxk).backward()
    W = params["W_dec"].detach()
    G = params["W_dec"].grad
    params["W_dec"].grad = G - (G * W).sum(1, keepdim=True) * W / W.pow(2).sum(1, keepdim=True)

    torch.testing.assert_close(out.losses["mse"], mse)
    torch.testing.assert_close(out.losses["auxk"], auxk)
    for name, p in params.items():
        torch.testing.assert_close(fast[name], p.grad, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize(("column_major", "grad_layout"), [(False, "param"), (True, "param"), (True, "row")])
def test_adam_matches_torch_adam(column_major, grad_layout):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(24, 7, generator=g)
    init = [base.t() if column_major else base.t().contiguous(), torch.randn(7, generator=g)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    storage = [p.data_ptr() for p in ours]
    opt_ours = kernels.Adam(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    opt_ref = torch.optim.Adam(ref, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, foreach=False)
    for _ in range(4):
        # gradients in the parameter's layout (as autograd hands them over) or row-major (an all-reduce's)
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        if grad_layout == "param":
            grads = [gr.as_strided(p.shape, p.stride()) for gr, p in zip(grads, ours, strict=True)]
        for params, opt in ((ours, opt_ours), (ref, opt_ref)):
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr.clone()
            opt.step()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert [p.data_ptr() for p in ours] == storage
    assert ours[0].stride() == init[0].stride()
    # a checkpoint holds contiguous moments; loading restores the parameter's layout
    state = opt_ours.state_dict()
    state["state"] = {i: {k: v.contiguous() for k, v in st.items()} for i, st in state["state"].items()}
    fresh = kernels.Adam(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    fresh.load_state_dict(state)
    assert fresh.state[ours[0]]["exp_avg"].stride() == ours[0].stride()
    torch.testing.assert_close(fresh.state[ours[0]]["exp_avg"], opt_ours.state[ours[0]]["exp_avg"])


@pytest.mark.parametrize("case", ["random", "saturated", "few_positive"])
def test_batchtopk_selection_matches_flat_topk(case):
    """BatchTopK's row-wise exact selection keeps the same (token, latent) set as one top-(k*B) over the batch."""
    from saeforge.sae import create_training_sae
    from saeforge.sae.base import Collectives

    B, d_sae, k = 48, 2048, 8
    sae = create_training_sae({"architecture": "batchtopk", "d_in": 8, "d_sae": d_sae, "k": k})
    g = torch.Generator().manual_seed(7)
    pre = torch.randn(B, d_sae, generator=g)
    if case == "saturated":
        pre[3] += 6.0  # one token holds far more than 2k of the batch's top k*B
        pre[5, :40] = 9.0
    if case == "few_positive":
        pre = pre - 3.5
    idx, keep = sae._select(pre, Collectives())

    acts = pre.relu()
    tau = acts.flatten().topk(k * B).values[-1]
    expected = ((acts >= tau) & (acts > 0)).nonzero().tolist()
    rows = torch.arange(B).unsqueeze(1).expand_as(idx)
    got = sorted(zip(rows[keep].tolist(), idx[keep].tolist(), strict=True))
    assert got == sorted(map(tuple, expected))
    assert keep.any(1).sum() <= B and idx.shape[1] == int(keep.sum(1).max())
    torch.testing.assert_close(sae.threshold, acts[(acts >= tau) & (acts > 0)].min())


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated"])
def test_dense_architectures_fold_b_dec_without_changing_gradients(arch):
    """Dense architectures compute x @ W_enc + (b - b_dec @ W_enc); loss and every gradient equal those of the
    textbook (x - b_dec) @ W_enc + b (float64)."""
    from saeforge.sae import create_training_sae
    from saeforge.sae.base import TrainStepInput

    def textbook_pre(sae, x):
        return (x - sae.b_dec) @ sae.W_enc + sae.b_enc

    def textbook_paths(sae, x):
        xc = x - sae.b_dec
        return xc @ sae.W_enc + sae.b_gate, xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag

    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64) + 2.0
    runs = []
    for textbook in (False, True):
        sae = create_training_sae(
            {"architecture": arch, "d_in": 12, "d_sae": 48, "sparsity_coefficient": 0.3, "seed": 4}
        ).double()
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(
                    0.1
                    * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype)
                )
        if textbook:
            sae.pre_acts = lambda x, sae=sae: textbook_pre(sae, x)
            if arch == "gated":
                sae._paths = lambda x, sae=sae: textbook_paths(sae, x)
        out = sae.training_forward(TrainStepInput(x=x))
        out.loss.backward()
        runs.append((out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (loss, grads), (ref_loss, ref_grads) = runs
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=lambda m, name=name: f"grad {name}: {m}")
