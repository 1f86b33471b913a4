"""The TopK family's sparse path (kernels.gather_preacts / kernels.sparse_decode) against dense float64 references."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from saeforge.sae import Collectives, TrainStepInput, create_training_sae, kernels
from saeforge.sae.matryoshka import DEFAULT_PREFIX_WEIGHT

B, D_IN, D_SAE, K = 24, 8, 40, 3


def _sae(arch: str, **cfg):
    sae = create_training_sae(dict(architecture=arch, d_in=D_IN, d_sae=D_SAE, k=K, seed=1, **cfg)).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_dec):
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.W_enc.add_(0.2 * torch.randn(sae.W_enc.shape, generator=g, dtype=torch.float64))
    return sae


def _inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=g)[:12]] = True
    return x, dead


def _dense_selected(pre: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (pre * mask).relu()


def _reference(sae, x, dead, arch, prefix_weight=1.0):
    """Dense float64 reimplementation: loss terms, x_hat, and the batch threshold candidate."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "topk":
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(K, dim=1).indices, True)
    else:
        flat = pre.relu().flatten()
        mask = (
            torch.zeros_like(flat, dtype=torch.bool).scatter(0, flat.topk(K * B).indices, True).view_as(pre)
        )
    z = _dense_selected(pre, mask)
    losses = {}
    if arch == "matryoshka":
        for end in (4, 8, 16, 40):
            x_hat = z[:, :end] @ sae.W_dec[:end] + sae.b_dec
            weight = 1.0 if end == D_SAE else prefix_weight
            losses[f"mse_prefix_{end}"] = weight * (x - x_hat).pow(2).sum(-1).mean()
    x_hat = z @ sae.W_dec + sae.b_dec
    losses.setdefault("mse", (x - x_hat).pow(2).sum(-1).mean())
    residual = (x - x_hat).detach()
    k_aux = min(D_IN // 2, int(dead.sum()))
    aux_mask = torch.zeros_like(mask).scatter(
        1, pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=1).indices, True
    )
    e_hat = _dense_selected(pre, aux_mask) @ sae.W_dec
    losses["auxk"] = ((residual - e_hat).pow(2).sum(-1).mean()) / 32
    kept = pre.relu()[mask & (pre > 0)]
    return losses, x_hat, kept.min()


@pytest.mark.parametrize(
    ("arch", "prefix_weight"),
    [
        ("topk", None),
        ("batchtopk", None),
        ("matryoshka", None),
        ("matryoshka", 1.0),
        ("matryoshka", 0.3),
        ("matryoshka", 0.0),
    ],
)
def test_values_and_gradients_match_dense_reference(arch, prefix_weight):
    x, dead = _inputs()
    cfg = {"group_sizes": [4, 4, 8, 24]} if arch == "matryoshka" else {}
    if prefix_weight is not None:
        cfg["prefix_weight"] = prefix_weight
    sae, ref = _sae(arch, **cfg), _sae(arch, **cfg)
    out = sae.training_forward(TrainStepInput(x=x, dead_mask=dead))
    weight = DEFAULT_PREFIX_WEIGHT if prefix_weight is None else prefix_weight
    ref_losses, ref_x_hat, ref_min = _reference(ref, x, dead, arch, weight)
    if arch == "matryoshka":
        del ref_losses["mse"]
    assert set(out.losses) == set(ref_losses)
    for name, value in ref_losses.items():
        torch.testing.assert_close(out.losses[name], value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.x_hat, ref_x_hat)
    torch.testing.assert_close(out.loss, sum(ref_losses.values()))
    out.loss.backward()
    sum(ref_losses.values()).backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(ref, name).grad, rtol=1e-9, atol=1e-12)
    if arch != "topk":
        torch.testing.assert_close(sae.threshold, ref_min.to(sae.threshold))
    # fired counts every kept pair, but for the batch rule the smallest: the first step sets theta to it
    unfired = 0 if arch == "topk" else 1
    assert out.fired.sum().item() == pytest.approx(out.l0.item() * B - unfired)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_auxk_gradient_reaches_encoder(arch):
    x, dead = _inputs()
    sae, ref = _sae(arch), _sae(arch)
    out = sae.training_forward(TrainStepInput(x=x, dead_mask=dead))
    out.losses["auxk"].backward()
    ref_losses, _, _ = _reference(ref, x, dead, "topk" if arch == "topk" else "batchtopk")
    ref_losses["auxk"].backward()
    assert sae.W_enc.grad[:, dead].abs().sum() > 0
    torch.testing.assert_close(sae.W_enc.grad, ref.W_enc.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sae.W_dec.grad, ref.W_dec.grad, rtol=1e-9, atol=1e-12)


def _sparse_only_gather(x, W_enc, b_enc, pre, pairs):
    assert not pre.requires_grad, "selection pre-activations must carry no autograd history"
    return (x[pairs.tokens] * W_enc.T[pairs.latents]).sum(-1) + b_enc[pairs.latents]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_no_dense_latent_tensor_in_the_graph(arch, monkeypatch):
    """With column-gathering kernels, nothing of shape [B, d_sae] is saved for backward by the architecture."""
    monkeypatch.setattr(kernels, "gather_preacts", _sparse_only_gather)
    x, dead = _inputs()
    sae = _sae(arch)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sae.training_forward(TrainStepInput(x=x, dead_mask=dead))
    out.loss.backward()
    assert shapes, "expected saved tensors"
    assert not [s for s in shapes if s[:1] == (B,) and D_SAE in s], shapes
    assert sae.W_enc.grad[:, dead].abs().sum() > 0


class _ThreadCollectives(Collectives):
    def __init__(self, rank: int, world_size: int, slots: list, barrier: threading.Barrier):
        self.rank, self.world_size, self.slots, self.barrier = rank, world_size, slots, barrier

    def _exchange(self, t):
        self.slots[self.rank] = t
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def all_reduce_sum(self, t):
        return sum(self._exchange(t))

    def all_gather_cat(self, t):
        return torch.cat(self._exchange(t))


def test_batchtopk_selects_over_the_global_batch():
    """Two data-parallel ranks (threads) keep exactly what one process keeps on the concatenated batch."""
    x, dead = _inputs()
    single = _sae("batchtopk")
    whole = single.training_forward(TrainStepInput(x=x, dead_mask=dead))
    slots, barrier = [None, None], threading.Barrier(2)
    ranks = [copy.deepcopy(_sae("batchtopk")) for _ in range(2)]
    outs = [None, None]

    def run(r):
        coll = _ThreadCollectives(r, 2, slots, barrier)
        outs[r] = ranks[r].training_forward(TrainStepInput(x=x.chunk(2)[r], dead_mask=dead, collectives=coll))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(torch.cat([o.x_hat for o in outs]), whole.x_hat)
    torch.testing.assert_close(outs[0].fired + outs[1].fired, whole.fired)
    for r in range(2):
        torch.testing.assert_close(ranks[r].threshold, single.threshold)
    local_only = _sae("batchtopk").training_forward(TrainStepInput(x=x.chunk(2)[0], dead_mask=dead))
    assert not torch.allclose(local_only.x_hat, outs[0].x_hat)


def test_batchtopk_threshold_is_a_moving_average():
    x, dead = _inputs()
    sae = _sae("batchtopk", threshold_momentum=0.9)
    sae.training_forward(TrainStepInput(x=x))
    first = sae.threshold.clone()
    _, _, m2 = _reference(_sae("batchtopk"), 2 * x, dead, "batchtopk")
    out = sae.training_forward(TrainStepInput(x=2 * x))
    torch.testing.assert_close(sae.threshold, 0.9 * first + 0.1 * m2.to(first))
    torch.testing.assert_close(out.extras["threshold"], sae.threshold)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_default_threshold_tracks_the_batch_threshold_as_a_naive_ema(arch):
    """Over steps whose batch threshold tau drifts (the inputs shrink 10% a step, so the activations do), the
    threshold equals a naive float64 EMA (momentum 0.5, the default; the first step sets it) of tau, tau taken by
    sorting every ReLU'd pre-activation of the batch; and it ends within 10% of the last tau, where the former
    default, 0.99, ends far above it."""
    x, _ = _inputs()
    cfg = {"group_sizes": [4, 4, 8, 24]} if arch == "matryoshka" else {}
    sae, slow = _sae(arch, **cfg), _sae(arch, threshold_momentum=0.99, **cfg)
    ref = None
    for step in range(8):
        xs = x * 0.9**step
        with torch.no_grad():
            acts = sae._pre_no_grad(xs - sae.b_dec).double().relu().flatten().sort(descending=True).values
        tau = acts[K * B - 1].item()
        ref = tau if ref is None else 0.5 * ref + 0.5 * tau
        sae.training_forward(TrainStepInput(x=xs))
        slow.training_forward(TrainStepInput(x=xs))
        assert sae.threshold.item() == pytest.approx(ref, rel=1e-6)
    assert abs(sae.threshold.item() / tau - 1) < 0.1
    assert slow.threshold.item() / tau > 1.3


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_counts_a_latent_as_fired_only_above_the_inference_threshold(arch):
    """A kept value at or under theta would not fire in the exported SAE, so it does not reset the latent's dead
    clock: fired counts the kept pairs above the updated threshold (a naive float64 EMA of the sorted batch
    thresholds), while L0 still counts every kept pair. The second batch is shrunk so that its tau falls under
    the first's and some kept values lie in [tau, theta]."""
    x, _ = _inputs()
    cfg = {"group_sizes": [4, 4, 8, 24]} if arch == "matryoshka" else {}
    sae = _sae(arch, **cfg)
    taus = []
    for xs in (x, 0.5 * x):
        with torch.no_grad():
            pre = sae._pre_no_grad(xs - sae.b_dec).double()
        flat = pre.relu().flatten()
        kept = torch.zeros_like(flat, dtype=torch.bool).scatter(0, flat.topk(K * B).indices, True)
        kept = (kept & (flat > 0)).view_as(pre)
        taus.append(pre[kept].min().item())
        out = sae.training_forward(TrainStepInput(x=xs))
    theta = 0.5 * taus[0] + 0.5 * taus[1]
    assert sae.threshold.item() == pytest.approx(theta, rel=1e-9)
    torch.testing.assert_close(out.fired, (kept & (pre > theta)).sum(0).to(out.fired))
    assert out.l0.item() == pytest.approx(kept.sum().item() / B)
    assert 0 < out.fired.sum() < kept.sum()


def test_unit_norm_decoder_hooks():
    sae = _sae("topk")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.before_optimizer_step()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(D_SAE, dtype=torch.float64))
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=torch.float64))


def test_topk_init_encoder_is_decoder_transpose_with_unit_rows():
    sae = create_training_sae(dict(architecture="topk", d_in=D_IN, d_sae=D_SAE, k=K))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_matryoshka_prefix_weight_zero_is_batchtopk():
    """prefix_weight 0 leaves only the whole SAE's reconstruction: BatchTopK's loss and gradients exactly."""
    x, dead = _inputs()
    mat = _sae("matryoshka", group_sizes=[4, 4, 8, 24], prefix_weight=0.0)
    btk = _sae("batchtopk")
    out_m = mat.training_forward(TrainStepInput(x=x, dead_mask=dead))
    out_b = btk.training_forward(TrainStepInput(x=x, dead_mask=dead))
    torch.testing.assert_close(out_m.loss, out_b.loss, rtol=1e-12, atol=1e-14)
    out_m.loss.backward()
    out_b.loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(mat, name).grad, getattr(btk, name).grad, rtol=1e-10, atol=1e-13)
