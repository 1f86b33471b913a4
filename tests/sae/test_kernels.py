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


def _csr_inputs(B=12, d_in=6, d_sae=30, dtype=torch.float64, seed=0):
    """Uneven rows of pairs (rows 0, 5 and the last hold none; a latent may repeat within a row) as BatchTopK
    keeps them: Pairs, with x, W_enc (column-major), b_enc, W_dec."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d_in, generator=g, dtype=dtype)
    W_enc = torch.randn(d_sae, d_in, generator=g, dtype=dtype).t()
    b_enc = torch.randn(d_sae, generator=g, dtype=dtype)
    W_dec = torch.randn(d_sae, d_in, generator=g, dtype=dtype)
    counts = torch.randint(2, 9, (B,), generator=g)
    counts[[0, 5, B - 1]] = 0
    tokens = torch.arange(B).repeat_interleave(counts)
    latents = torch.randint(0, d_sae // 2, (len(tokens),), generator=g)
    latents[1] = latents[0]  # row 1's first two pairs: one latent twice
    return x, W_enc, b_enc, W_dec, kernels.Pairs.of_tokens(latents, tokens, B)


def _dense_z(pairs, vals, d_sae):
    """The dense [B, d_sae] code with vals summed at the pairs' (token, latent) places."""
    z = vals.new_zeros(pairs.n_rows, d_sae)
    return z.index_put((pairs.tokens, pairs.latents), vals, accumulate=True)


def test_pairs_of_uneven_rows_are_csr():
    _, _, _, _, pairs = _csr_inputs()
    counts = torch.bincount(pairs.tokens, minlength=pairs.n_rows)
    assert counts[0] == counts[5] == counts[-1] == 0 and counts.max() > counts[counts > 0].min()
    assert torch.equal(pairs.offsets, counts.cumsum(0) - counts)
    idx = torch.tensor([[3, 1, 4], [1, 5, 9]])
    keep = torch.tensor([[True, False, True], [False, False, False]])
    masked = kernels.Pairs.masked(idx, keep)
    assert masked.latents.tolist() == [3, 4] and masked.tokens.tolist() == [0, 0]
    assert masked.offsets.tolist() == [0, 2]
    padded = kernels.Pairs.padded(idx)
    assert padded.tokens.tolist() == [0, 0, 0, 1, 1, 1] and padded.offsets.tolist() == [0, 3]


def test_flat_pairs_match_dense_reference_float64():
    """gather_preacts then sparse_decode over uneven rows of pairs (empty rows included): values and gradients
    w.r.t. x, W_enc, b_enc, W_dec equal the dense float64 expression, and the per-pair values' gradients equal
    the eager references'."""
    x, W_enc, b_enc, W_dec, pairs = _csr_inputs()
    d_sae = W_dec.shape[0]
    target = torch.randn(pairs.n_rows, x.shape[1], generator=torch.Generator().manual_seed(5), dtype=x.dtype)

    def fast(x, W_enc, b_enc, W_dec):
        vals = kernels.gather_preacts_fast(x, W_enc, b_enc, (x @ W_enc + b_enc).detach(), pairs)
        return (kernels.sparse_decode_fast(pairs, vals.relu(), W_dec) - target).pow(2).sum()

    def dense(x, W_enc, b_enc, W_dec):
        pre = x @ W_enc + b_enc
        count = _dense_z(pairs, torch.ones(len(pairs.latents), dtype=x.dtype), d_sae)
        return ((count * pre.relu()) @ W_dec - target).pow(2).sum()

    out_f, grads_f = _grads(fast, [x, W_enc, b_enc, W_dec])
    out_d, grads_d = _grads(dense, [x, W_enc, b_enc, W_dec])
    torch.testing.assert_close(out_f, out_d)
    for name, gf, gd in zip(["x", "W_enc", "b_enc", "W_dec"], grads_f, grads_d, strict=True):
        torch.testing.assert_close(gf, gd, msg=lambda m, name=name: f"grad {name}: {m}")

    vals = torch.randn(len(pairs.latents), generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    out_f, grads_f = _grads(lambda v, W: kernels.sparse_decode_fast(pairs, v, W), [vals, W_dec])
    out_e, grads_e = _grads(lambda v, W: kernels.sparse_decode_eager(pairs, v, W), [vals, W_dec])
    out_d, grads_d = _grads(lambda v, W: _dense_z(pairs, v, d_sae) @ W, [vals, W_dec])
    torch.testing.assert_close(out_f, out_d)
    torch.testing.assert_close(out_e, out_d)
    assert out_f[[0, 5, -1]].abs().max() == 0
    for name, gf, ge, gd in zip(["vals", "W_dec"], grads_f, grads_e, grads_d, strict=True):
        torch.testing.assert_close(gf, gd, msg=lambda m, name=name: f"grad {name}: {m}")
        torch.testing.assert_close(ge, gd, msg=lambda m, name=name: f"eager grad {name}: {m}")

    out_f, grads_f = _grads(
        lambda x, W, b: kernels.gather_preacts_fast(x, W, b, (x @ W + b).detach(), pairs), [x, W_enc, b_enc]
    )
    out_e, grads_e = _grads(
        lambda x, W, b: kernels.gather_preacts_eager(x, W, b, None, pairs), [x, W_enc, b_enc]
    )
    torch.testing.assert_close(out_f, out_e)
    for name, gf, ge in zip(["x", "W_enc", "b_enc"], grads_f, grads_e, strict=True):
        torch.testing.assert_close(gf, ge, msg=lambda m, name=name: f"grad {name}: {m}")


def test_flat_pairs_gradcheck_float64():
    x, W_enc, b_enc, W_dec, pairs = _csr_inputs(B=6, d_in=3, d_sae=8)

    def gp(x, W_enc, b_enc):
        return kernels.gather_preacts_fast(x, W_enc, b_enc, x @ W_enc + b_enc, pairs)

    assert torch.autograd.gradcheck(gp, [t.clone().requires_grad_() for t in (x, W_enc, b_enc)])
    vals = torch.randn(len(pairs.latents), dtype=torch.float64, requires_grad=True)
    W = W_dec.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, W: kernels.sparse_decode_fast(pairs, v, W), [vals, W])


def test_padded_index_is_the_flat_form_with_equal_rows():
    """An idx [B, w] and its Pairs give the same values and gradients (one code path, two shapes)."""
    x, W_enc, b_enc, W_dec, idx = _inputs(dtype=torch.float64)
    pairs = kernels.Pairs.padded(idx)
    pre = (x @ W_enc + b_enc).detach()
    for form, shape in ((idx, idx.shape), (pairs, (idx.numel(),))):
        v = kernels.gather_preacts(x, W_enc, b_enc, pre, form)
        assert v.shape == shape
        torch.testing.assert_close(v.reshape(-1), pre.gather(1, idx).reshape(-1), rtol=0, atol=0)
    vals = torch.randn(idx.shape, dtype=torch.float64)
    out_p, grads_p = _grads(lambda v, W: kernels.sparse_decode(idx, v, W), [vals, W_dec])
    out_f, grads_f = _grads(lambda v, W: kernels.sparse_decode(pairs, v.reshape(-1), W), [vals, W_dec])
    torch.testing.assert_close(out_p, out_f, rtol=0, atol=0)
    for gp, gf in zip(grads_p, grads_f, strict=True):
        torch.testing.assert_close(gp, gf, rtol=0, atol=0)


def test_regrouped_pairs_decode_each_group_once():
    """Pairs.regroup (Matryoshka's one decode of all prefixes): row g * B + b of the decode is token b's
    reconstruction from its group-g pairs, as a decode of all pairs with the other groups' values zeroed."""
    _, _, _, W_dec, pairs = _csr_inputs()
    vals = torch.randn(len(pairs.latents), generator=torch.Generator().manual_seed(8), dtype=W_dec.dtype)
    group = torch.bucketize(pairs.latents, torch.tensor([4, 9, 30]), right=True)
    order, by_group = pairs.regroup(group, 3)
    assert by_group.n_rows == 3 * pairs.n_rows and (by_group.tokens.diff() >= 0).all()
    parts = kernels.sparse_decode(by_group, vals[order], W_dec).view(3, pairs.n_rows, -1)
    for g in range(3):
        expected = kernels.sparse_decode_eager(pairs, vals * (group == g), W_dec)
        torch.testing.assert_close(parts[g], expected)


def _check_topk(pre, k):
    values, indices = kernels.topk_select_fast(pre, k)
    ref_values, _ = kernels.topk_select_eager(pre, k)
    torch.testing.assert_close(values.sort(1).values, ref_values.sort(1).values)
    torch.testing.assert_close(pre.gather(1, indices), values)
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "indices repeat within a row"


DTYPES_2_AND_4_BYTES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES_2_AND_4_BYTES)
def test_topk_select_random_rows(dtype):
    """2-byte dtypes gather and scatter as int16 bits (the screen's bf16 product): same answer as torch.topk."""
    g = torch.Generator().manual_seed(0)
    assert (kernels._group_size(1024, 8), kernels._group_size(1000, 8), kernels._group_size(100, 8)) == (
        16,
        8,
        0,
    )
    _check_topk(torch.randn(64, 1024, generator=g).to(dtype), 8)
    _check_topk(torch.randn(64, 1000, generator=g).to(dtype), 8)
    _check_topk(torch.randn(64, 4096, generator=g).to(dtype), 16)
    _check_topk((torch.randn(8, 24576, generator=g) + torch.randn(24576, generator=g)).to(dtype), 64)


@pytest.mark.parametrize("dtype", DTYPES_2_AND_4_BYTES)
def test_topk_select_crowded_groups_ties_and_masks(dtype):
    g = torch.Generator().manual_seed(1)
    d_sae, k = 2048, 8
    groups = d_sae // kernels._group_size(d_sae, k)
    pre = torch.randn(50, d_sae, generator=g)
    # rows 40-49: every entry negative (a group's best taken out must leave its second best, not zero)
    pre[40:] = -pre[40:].abs() - 1
    # rows 0-9: one strided group holds the 6 largest entries (forces the exact fallback)
    for r in range(10):
        pre[r, r + groups * torch.arange(6)] = 10.0 + torch.rand(6, generator=g)
    # rows 10-19: ties at the boundary
    pre[10:20, :20] = 5.0
    # rows 20-29: most entries masked to -inf (AuxK over few dead latents)
    pre[20:30, 100:] = float("-inf")
    # rows 30-39: group maxima tie with second entries
    pre[30:40, 3] = pre[30:40, 3 + groups] = 7.0
    _check_topk(pre.to(dtype), k)


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


@pytest.mark.parametrize("path", ["dense", "screened", "screened_rows"])
@pytest.mark.parametrize("case", ["random", "saturated", "few_positive", "clustered"])
def test_batchtopk_selection_matches_flat_topk(case, path, monkeypatch):
    """BatchTopK keeps the same (token, latent) set as one top-(k*B) over the batch, whether from the dense
    pre-activations, from the bf16 screen over the whole batch, or (where that screen does not certify its
    answer) from each row's offers through the row-wise screen (pre=None)."""
    from saeforge.sae import create_training_sae, screen
    from saeforge.sae.base import Collectives

    B, d_in, d_sae, k = 48, 32, 2048, 8
    sae = create_training_sae({"architecture": "batchtopk", "d_in": d_in, "d_sae": d_sae, "k": k})
    g = torch.Generator().manual_seed(7)
    xc = torch.randn(B, d_in, generator=g)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
    if case == "saturated":
        xc[3] *= 6.0  # one token holds far more than 2k of the batch's top k*B
    if case == "few_positive":
        with torch.no_grad():
            sae.b_enc.sub_(3.5)
    if case == "clustered":  # the batch's top values 1e-4 apart, far inside bf16's resolution (2^-8)
        with torch.no_grad():
            sae.W_enc.mul_(1e-3)
            sae.b_enc.copy_(1.0 + 1e-4 * torch.randperm(d_sae, generator=g).float())
    batch_screen, answers = screen.screened_batch_topk, []
    monkeypatch.setattr(
        screen,
        "screened_batch_topk",
        lambda *a: answers.append(None if path == "screened_rows" else batch_screen(*a)) or answers[-1],
    )
    real = (xc.double() @ sae.W_enc.double() + sae.b_enc.double()).float()
    pre = sae._pre_no_grad(xc)
    pairs, kept = sae._select(xc, None if path != "dense" else pre, Collectives())
    torch.testing.assert_close(kept, pre[pairs.tokens, pairs.latents])
    assert len(answers) == (path != "dense")
    if path == "screened":  # certified, except where the values cluster within the screen's error
        assert (answers[0] is None) == (case == "clustered")
    pre = real if path != "dense" else pre  # the screen's contract is the real-arithmetic top k
    if case == "saturated":
        assert int((pairs.tokens == 3).sum()) > 2 * k  # the widened row took part

    acts = pre.relu()
    tau = acts.flatten().topk(k * B).values[-1]
    expected = ((acts >= tau) & (acts > 0)).nonzero().tolist()
    got = list(zip(pairs.tokens.tolist(), pairs.latents.tolist(), strict=True))
    assert sorted(got) == sorted(map(tuple, expected))
    # token-major CSR: tokens non-decreasing, offsets where each token's pairs start
    assert (pairs.tokens.diff() >= 0).all()
    counts = torch.bincount(pairs.tokens, minlength=B)
    assert torch.equal(pairs.offsets, counts.cumsum(0) - counts)
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
