"""The certified bf16 screen for TopK equals the real-arithmetic (float64) TopK and the dense fp32 one: indices,
values, gradients, and the steps of TopK training (with and without dead latents)."""

from __future__ import annotations

import pytest
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
        ref = exact_topk(x, W, b, k)
        ri, rv = _sorted(ref.indices, ref.values)
        for margin in (1, None):
            got = screened_topk(x, W, b, k, margin=margin)
            gi, gv = _sorted(got.indices, got.values)
            assert torch.equal(gi, ri)
            assert torch.allclose(gv, rv, rtol=1e-5, atol=1e-5)
            assert torch.equal(gi, _float64_topk(x, W, b, k).sort(1).values)
            assert got.fallback == 0
            # a margin of 1 leaves the flat rows to the wider passes; the default margin k screens every row
            assert (0 < got.rescreened < x.shape[0]) if margin == 1 else got.rescreened == 0


def test_rows_no_screen_can_settle_fall_back_to_the_dense_row():
    """Latents that all lie within the bf16 error of each other (but not of fp32's): no candidate set is
    certified, so every row takes its dense fp32 row, and still gets the real-arithmetic TopK (the dense fp32
    TopK alone differs from it in a row here: 2e-5 apart, within fp32's rounding)."""
    x, W, b = _problem(2)
    W = W[:, :1] + 1e-3 * W  # every latent within ~1e-3 of latent 0's direction
    got = screened_topk(x, W, b, 8)
    assert got.fallback == x.shape[0]
    assert torch.equal(got.indices, _float64_topk(x, W, b, 8).sort(1).values)


def test_the_answer_does_not_depend_on_the_thread_count_or_the_batch():
    """The bf16 product's rounding varies with oneDNN's blocking (threads, rows per call); the certified answer,
    its order included, must not: resumed runs are bit-identical to uninterrupted ones. The second problem's 7
    rows all take their dense rows, whose few-row fp32 GEMM gives other bits with 1 and 2 threads here."""
    flat_x, flat_W, flat_b = _problem(2)
    flat = (flat_x[:7].contiguous(), flat_W[:, :1] + 1e-3 * flat_W, flat_b)
    threads = torch.get_num_threads()
    for x, W, b in (_problem(4, B=256, d_in=64, d_sae=4096), flat):
        try:
            torch.set_num_threads(1)
            one = screened_topk(x, W, b, 8)
            torch.set_num_threads(max(2, threads))
            two = screened_topk(x, W, b, 8)
        finally:
            torch.set_num_threads(threads)
        cut = len(x) // 2
        halves = [screened_topk(x[:cut], W, b, 8), screened_topk(x[cut:], W, b, 8)]
        split = (torch.cat([h.indices for h in halves]), torch.cat([h.values for h in halves]))
        for idx, val in ((two.indices, two.values), split):
            assert torch.equal(one.indices, idx) and torch.equal(one.values, val)
    assert one.fallback == 7


def test_near_ties_follow_real_arithmetic_not_rounding():
    """Two latents whose real pre-activations differ by less than fp32's rounding of them: the screen decides
    them in float64, as the real-arithmetic TopK does, without falling back (the dense fp32 GEMM picks the
    wrong one in some rows here: 11 of 96 on the project's CPU)."""
    x, W, b = _problem(0)
    W, b = W.clone(), b.clone()
    # latent 1 is latent 0 one ulp longer in every weight: it leads by ~1e-7 of their value, in every row
    W[:, 1], b[1] = torch.nextafter(W[:, 0], W[:, 0].sign() * torch.inf), b[0]
    x = 10 * W[:, 0] + 0.1 * x
    real = x.double() @ W.double() + b.double()
    assert bool((real[:, 1] > real[:, 0]).all()) and bool(
        (real[:, :2].max(1).values > real[:, 2:].max(1).values).all()
    )
    got = screened_topk(x, W, b, 1)
    assert got.near_ties == x.shape[0] and got.fallback == 0
    assert torch.equal(got.indices.squeeze(1), torch.ones(x.shape[0], dtype=torch.long))


def test_exact_ties_fall_back_to_exact():
    x, W, b = _problem(0)
    W, b = W.clone(), b.clone()
    W[:, 1], b[1] = W[:, 0], b[0]  # latents 0 and 1 tie in every row, and lead every row:
    x = 10 * W[:, 0] + 0.1 * x
    got = screened_topk(x, W, b, 1)
    assert got.fallback == x.shape[0]
    assert got.near_ties == x.shape[0]  # the screen itself held: only the tie, fp32's own, sent them back
    # a real tie: either latent is the top 1; the value is the fp32 dot product, the dense GEMM's up to rounding
    assert set(got.indices.flatten().tolist()) <= {0, 1}
    torch.testing.assert_close(got.values, exact_topk(x, W, b, 1).values, rtol=1e-6, atol=1e-5)


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


@pytest.mark.parametrize("n_dead", [0, 40])
def test_topk_training_with_the_screen_equals_exact_training(n_dead):
    from saeforge.sae import create_training_sae
    from saeforge.sae.base import TrainStepInput

    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 16, generator=g) + 1.0 for _ in range(3)]
    # with dead latents the screened step reads AuxK from the dead latents' columns alone
    dead = torch.zeros(256, dtype=torch.bool)
    dead[torch.randperm(256, generator=g)[:n_dead]] = True
    models = []
    for screen in ("off", "bf16"):
        torch.manual_seed(0)
        m = create_training_sae({"architecture": "topk", "d_in": 16, "d_sae": 256, "k": 4, "screen": screen})
        m.init_from_data(xs[0])
        assert m._screens(dead) == (screen == "bf16")
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        for x in xs:
            out = m.training_forward(TrainStepInput(x=x, dead_mask=dead))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
        models.append((m, out))
    (a, out_a), (b, out_b) = models
    assert torch.equal(out_a.fired, out_b.fired)
    assert (float(out_a.losses["auxk"].detach()) > 0) == (n_dead > 0)
    assert torch.allclose(out_a.losses["auxk"], out_b.losses["auxk"], rtol=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-6)


def test_auto_screens_fp32_cpu_steps_with_native_bf16_only():
    from saeforge.sae import create_training_sae
    from saeforge.sae.training import _native_bf16

    none_dead = torch.zeros(256, dtype=torch.bool)
    most_dead = torch.ones(256, dtype=torch.bool)
    spec = {"architecture": "topk", "d_in": 8, "d_sae": 256, "k": 4}
    auto = create_training_sae(spec)
    assert auto.cfg.screen == "auto"
    native = _native_bf16(torch.device("cpu"))
    assert native == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert auto._screens(none_dead) == native and auto._screens(None) == native
    assert not auto._screens(most_dead)  # more than half dead: the dense GEMM costs less than their columns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not auto._screens(none_dead)  # the dense product is bf16 already
    assert not auto.to(torch.float64)._screens(none_dead)
    assert not create_training_sae({**spec, "screen": "off"})._screens(none_dead)
    assert create_training_sae({**spec, "screen": "bf16"})._screens(none_dead)
    # too few latents for the screen to skip any (k + its margin + 1 >= d_sae): the dense product
    assert not create_training_sae({**spec, "d_sae": 64, "screen": "bf16"})._screens(none_dead[:64])
    # BatchTopK screens the 2k largest of each row
    btk = {**spec, "architecture": "batchtopk", "screen": "bf16"}
    assert create_training_sae({**btk, "d_sae": 160})._screens(None)
    assert not create_training_sae({**btk, "d_sae": 76})._screens(None)


def _batch_rule(x, W, b, n_keep):
    """The batch rule in float64: the (token, latent) pairs among the n_keep largest and positive; the level."""
    real = x.double() @ W.double() + b.double()
    tau = real.flatten().topk(n_keep).values[-1]
    return set(map(tuple, ((real >= tau) & (real > 0)).nonzero().tolist())), float(tau), real


@pytest.mark.parametrize("problem", ["spread", "clustered", "cancelling"])
def test_the_batch_screen_at_any_level_is_exact_or_refuses(problem):
    """The batch form of the screen, tried at levels swept across the batch threshold tau (3 screen errors E
    either side): every answer it certifies is the real-arithmetic batch rule; every level at or below tau - 2 d
    certifies (d: fp32's evaluation bound), levels a bf16 step above tau refuse. Clustered: 64 latents of
    nearly one direction, so the batch's top values lie far closer together than the bf16 product resolves.
    Cancelling: two input dimensions of +-4000 terms that cancel, so the screen errs by many of its own steps
    at the batch threshold (an entry may fall below one whose real value is lower)."""
    from saeforge.distributed import Collectives
    from saeforge.sae import screen

    x, W, b = _problem(1, B=64, d_in=96, d_sae=768)
    if problem == "clustered":
        W[:, :64] = W[:, :1] + 2e-3 * W[:, :64]
        x += 2 * W[:, 0]
    if problem == "cancelling":
        g = torch.Generator().manual_seed(5)
        x[:, :2] += 2000.0
        W[0], W[1] = (
            2 + 1e-3 * torch.randn(W.shape[1], generator=g),
            -2 - 1e-3 * torch.randn(W.shape[1], generator=g),
        )
    n_keep = 4 * len(x)
    expected, tau, real = _batch_rule(x, W, b, n_keep)
    c = screen._screen(x, W, b)
    d, E = float(c.delta.max()), float(c.E.max())
    assert float((c.s.double() - real).abs().max()) > 1e2 * d  # the screen's rounding is what is at stake
    refused = []
    for level in tau + E * torch.linspace(-3, 3, 241, dtype=torch.float64):
        rows, latents, cap = screen._candidates(c, level, Collectives())
        sel = screen._certified(c, rows, latents, cap, n_keep, Collectives())
        refused.append(sel is None)
        if sel is None:
            assert level > tau - 2 * d
            continue
        assert set(zip(sel.tokens.tolist(), sel.latents.tolist(), strict=True)) == expected, float(level)
        torch.testing.assert_close(sel.values.double(), real[sel.tokens, sel.latents], rtol=1e-5, atol=1e-5)
        assert level * (1 - 2**-7) <= tau
    assert refused[-1] and not refused[0]
    # and at the level the screen estimates itself: certified (spread), and the same answer whenever it is;
    # where E dwarfs tau (cancelling) the candidates would be most of the batch, and it leaves them to the rows
    sel = screen.screened_batch_topk(x, W, b, n_keep, Collectives())
    assert (sel is None) == (problem == "cancelling") or problem == "clustered"
    if sel is not None:
        assert set(zip(sel.tokens.tolist(), sel.latents.tolist(), strict=True)) == expected
        assert sel.candidates < 3 * n_keep or problem == "clustered"


def test_entries_at_least_a_level_match_the_plain_comparison():
    """`_at_least`'s int16 group-maxima path returns exactly the entries of a bf16 product >= each row's level,
    row-major: positive, negative and zero levels (+0 and -0, with -0.0 entries), levels that equal entries."""
    from saeforge.sae import screen

    g = torch.Generator().manual_seed(0)
    s = torch.randn(40, 256, generator=g).to(torch.bfloat16)
    s[0, :8] = -0.0
    s[1, 5] = s[1, 200] = 1.5
    levels = (s[:, 7].abs() + 0.25, s.float().amax(1), torch.full((40,), 1.5), s[:, 3].float() - 0.5)
    for level in (*levels, s[:, 9].float(), s.float().amin(1), torch.zeros(40), -torch.zeros(40)):
        level = level.to(torch.bfloat16)
        level[1] = 1.5
        rows, latents = screen._at_least(s, level)
        assert torch.equal(torch.stack([rows, latents], 1), (s >= level[:, None]).nonzero())


def test_keys_order_every_bf16_value_as_the_values_do():
    """Every non-NaN bf16 bit pattern: `_key` orders them as their values, equal values (+0, -0) equal keys,
    and `_value` inverts it; `_group_max` is the key of each strided group's largest value where that is
    non-negative, and `_exact_below_zero` makes it that everywhere in the rows it is given."""
    from saeforge.sae import screen

    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.bfloat16)
    bits, values = bits[~values.isnan()], values[~values.isnan()]
    keys = screen._key(bits)
    by_value = values.float().argsort(stable=True)
    assert bool((keys[by_value].diff() >= 0).all())
    assert torch.equal(keys[by_value].diff() == 0, values.float()[by_value].diff() == 0)
    assert torch.equal(screen._value(keys).float(), values.float())
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(16, 64, generator=g) - 1.5).to(torch.bfloat16)  # most groups hold no positive entry
    s[0, ::8] = -0.0
    naive = s.float().view(16, 8, 8).amax(1)
    gm = screen._group_max(s)
    assert torch.equal(screen._value(gm).float()[naive >= 0], naive[naive >= 0])
    assert bool((gm[naive < 0] < 0).all()) and bool((naive < 0).any())
    screen._exact_below_zero(s, gm, torch.arange(1, 16, 2))  # the odd rows become exact keys, the even stay
    assert torch.equal(screen._value(gm).float()[1::2], naive[1::2])
    assert torch.equal(gm[::2], screen._group_max(s)[::2])


def test_the_level_pass_screens_rows_whose_top_k_is_mostly_negative():
    """Trained SAEs' rows hold few positive pre-activations (negative biases): the first pass's level, the
    (k + r)-th largest group maximum, is then negative. It must screen those rows too, with the real TopK."""
    x, W, b = _problem(3)
    b = b - float(
        (x @ W + b).flatten().kthvalue(int(0.995 * x.shape[0] * W.shape[1])).values
    )  # 0.5% positive
    assert float((x @ W + b > 0).sum(1).float().mean()) < 8
    got = screened_topk(x, W, b, 8)
    assert torch.equal(got.indices, _float64_topk(x, W, b, 8).sort(1).values)
    assert got.rescreened == 0 and got.fallback == 0
    assert int((got.values.amin(1) < 0).sum()) >= len(x) // 3  # the k-th value, and so the level, is negative


def test_the_batch_screen_does_not_depend_on_the_thread_count_or_its_level():
    """The batch screen's candidates follow the bf16 product's rounding (threads) and its level; the certified
    pairs and their values, in their order, do not: one answer with 1 and 2 threads and at any level that
    certifies."""
    from saeforge.distributed import Collectives
    from saeforge.sae import screen

    x, W, b = _problem(4, B=256, d_in=64, d_sae=4096)
    n_keep, threads = 8 * len(x), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = screen.screened_batch_topk(x, W, b, n_keep, Collectives())
        torch.set_num_threads(max(2, threads))
        two = screen.screened_batch_topk(x, W, b, n_keep, Collectives())
    finally:
        torch.set_num_threads(threads)
    c = screen._screen(x, W, b)
    tau = float(one.values.min())
    lower = screen._certified(c, *screen._candidates(c, torch.tensor(0.8 * tau).double(), Collectives()), n_keep,
                              Collectives())  # fmt: skip
    assert lower.candidates > one.candidates
    for other in (two, lower):
        for field in ("values", "tokens", "latents"):
            assert torch.equal(getattr(one, field), getattr(other, field)), field
