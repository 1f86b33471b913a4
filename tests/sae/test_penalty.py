"""Standard, JumpReLU and Gated: loss terms against hand-written formulas, STE gradients, the L0 controller."""

from __future__ import annotations

import pytest
import torch

from saeforge.sae import TrainStepInput, create_training_sae
from saeforge.sae.jumprelu import JumpReLUFunction, StepFunction
from saeforge.synthetic import SyntheticActivations, SyntheticConfig

D_IN, D_SAE = 6, 10


def _sae(arch, **cfg):
    sae = create_training_sae(dict(architecture=arch, d_in=D_IN, d_sae=D_SAE, seed=0, **cfg)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return sae


def test_standard_l1_is_weighted_by_decoder_norms():
    sae = _sae("standard", sparsity_coefficient=0.7)
    x = torch.randn(5, D_IN, dtype=torch.float64)
    out = sae.training_forward(TrainStepInput(x=x, sparsity_warmup=0.5))
    with torch.no_grad():
        l1 = sum(
            max(0.0, float((x[b] - sae.b_dec) @ sae.W_enc[:, i] + sae.b_enc[i])) * float(sae.W_dec[i].norm())
            for b in range(5)
            for i in range(D_SAE)
        )
    assert out.losses["l1"].item() == pytest.approx(0.35 * l1 / 5)
    assert out.loss.item() == pytest.approx(out.losses["mse"].item() + out.losses["l1"].item())


def test_jumprelu_ste_gradients_match_the_paper():
    eps = 0.1
    pre = torch.tensor(
        [[0.22, 0.46, 0.60, -1.0], [0.53, 0.10, 0.30, 0.02]], dtype=torch.float64, requires_grad=True
    )
    theta = torch.tensor([0.25, 0.5, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)
    out = JumpReLUFunction.apply(pre, theta, eps)
    torch.testing.assert_close(out, pre.detach() * (pre.detach() > theta.detach()))
    out.backward(g)
    expected_theta = torch.zeros(4, dtype=torch.float64)
    expected_step = torch.zeros(4, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            if abs(pre[b, i].item() - theta[i].item()) < eps / 2:
                expected_theta[i] -= theta[i].item() / eps * g[b, i].item()
                expected_step[i] -= 1.0 / eps * g[b, i].item()
    assert (expected_step != 0).all() and (expected_theta != 0).sum() == 3
    torch.testing.assert_close(theta.grad, expected_theta)
    torch.testing.assert_close(pre.grad, g * (pre.detach() > theta.detach()))
    theta.grad = None
    pre.grad = None
    StepFunction.apply(pre, theta, eps).backward(g)
    torch.testing.assert_close(theta.grad, expected_step)
    assert pre.grad is None


def test_jumprelu_threshold_moves_under_adam_and_stays_nonnegative():
    sae = create_training_sae(dict(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE, sparsity_coefficient=1.0))
    start = sae.threshold.detach().clone()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(50):
        out = sae.training_forward(TrainStepInput(x=torch.randn(64, D_IN)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.after_optimizer_step()
    assert (sae.threshold - start).abs().max() > 0.1
    assert (sae.threshold >= 0).all()


def _train_l0(arch: str, steps: int, lr: float, **cfg) -> float:
    torch.manual_seed(0)
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=32, l0=3, seed=0))
    scale = 4.0 / data.sample(2048).norm(dim=1).mean().item()
    sae = create_training_sae(dict(architecture=arch, d_in=16, d_sae=32, **cfg))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for step in range(steps):
        out = sae.training_forward(
            TrainStepInput(x=scale * data.sample(256), sparsity_warmup=min(1.0, step / 30))
        )
        opt.zero_grad()
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
    with torch.no_grad():
        return float((sae.encode(scale * data.sample(4096)) > 0).sum(1).float().mean())


@pytest.mark.parametrize("loss, factor", [("l0", 1.5), ("tanh", 1.2)])
def test_jumprelu_larger_lambda_gives_lower_l0(loss, factor):
    extra = {"sparsity_loss": loss} | ({"pre_act_coefficient": 0.0} if loss == "l0" else {})
    l0s = [_train_l0("jumprelu", 150, 1e-2, sparsity_coefficient=lam, **extra) for lam in (0.01, 0.1, 1.0)]
    assert l0s[0] > factor * l0s[1] > factor * factor * l0s[2], l0s


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated"])
def test_target_l0_controller_reaches_target(arch):
    l0 = _train_l0(arch, 300, 3e-3, target_l0=6)
    assert 4 < l0 < 9, l0


def test_controller_waits_for_warmup_and_lives_in_a_buffer():
    sae = create_training_sae(dict(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE, target_l0=1))
    lam0 = sae.sparsity_coefficient.item()
    x = torch.randn(32, D_IN)
    sae.training_forward(TrainStepInput(x=x, sparsity_warmup=0.5))
    assert sae.sparsity_coefficient.item() == lam0
    out = sae.training_forward(TrainStepInput(x=x, sparsity_warmup=1.0))
    assert out.l0 > 1 and sae.sparsity_coefficient.item() > lam0
    assert out.extras["sparsity_coefficient"].item() == sae.sparsity_coefficient.item()
    assert "sparsity_coefficient" in sae.state_dict()
    fixed = create_training_sae(
        dict(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE, sparsity_coefficient=0.2)
    )
    fixed.training_forward(TrainStepInput(x=x))
    assert fixed.sparsity_coefficient.item() == pytest.approx(0.2)


def test_gated_aux_uses_a_stop_gradient_decoder():
    sae = _sae("gated", sparsity_coefficient=0.5)
    x = torch.randn(8, D_IN, dtype=torch.float64)
    out = sae.training_forward(TrainStepInput(x=x))
    out.losses["aux"].backward()
    assert sae.W_dec.grad is None or sae.W_dec.grad.abs().sum() == 0
    assert sae.b_dec.grad is not None and sae.W_enc.grad.abs().sum() > 0
    assert sae.r_mag.grad is None or sae.r_mag.grad.abs().sum() == 0
    xc = x - sae.b_dec
    gate = (xc @ sae.W_enc + sae.b_gate).relu()
    expected = (x - gate @ sae.W_dec - sae.b_dec).pow(2).sum(-1).mean()
    assert out.losses["aux"].item() == pytest.approx(expected.item())


def test_gated_magnitude_path_is_tied_through_r_mag():
    sae = _sae("gated", sparsity_coefficient=0.5)
    x = torch.randn(8, D_IN, dtype=torch.float64)
    xc = x - sae.b_dec
    mag = (xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag).relu()
    expected = ((xc @ sae.W_enc + sae.b_gate) > 0) * mag
    torch.testing.assert_close(sae.encode(x), expected)


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated"])
def test_firing_rate_init_starts_at_target_l0(arch):
    """init_from_data shifts each latent's encoder bias so that it fires on target_l0 / d_sae of the sample:
    every latent at the same rate, L0 = target on the sample and (within 20%) on fresh tokens."""
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=48, l0=3, seed=2))
    sample = 2.0 * data.sample(2048)
    sae = create_training_sae(dict(architecture=arch, d_in=16, d_sae=40, target_l0=5))
    off = create_training_sae(dict(architecture=arch, d_in=16, d_sae=40, target_l0=5, init_firing_rate=False))
    sae.init_from_data(sample)
    off.init_from_data(sample)
    with torch.no_grad():
        fires = sae.encode(sample) > 0
        fresh = float((sae.encode(2.0 * data.sample(4096)) > 0).sum(1).float().mean())
        untouched = float((off.encode(sample) > 0).sum(1).float().mean())
    assert fires.sum(0).tolist() == [round(2048 * 5 / 40)] * 40
    assert 4 <= fresh <= 6, fresh
    assert untouched > 10, untouched  # without it L0 starts near d_sae / 2


def _controlled_l0(gain: float, steps: int = 400) -> list[float]:
    """Per-step batch L0 of a ReLU SAE trained (Adam, lr 3e-3) to target_l0 = 6 on planted features, with the
    controller's integral rate at 0.05 and proportional gain `gain`."""
    torch.manual_seed(0)
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=32, l0=3, seed=0))
    sample = data.sample(4096)
    scale = 4.0 / sample.norm(dim=1).mean().item()
    cfg = dict(architecture="standard", d_in=16, d_sae=32, target_l0=6, l0_controller_rate=0.05)
    sae = create_training_sae({**cfg, "l0_controller_gain": gain})
    sae.init_from_data(scale * sample)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    l0s = []
    for _ in range(steps):
        out = sae.training_forward(TrainStepInput(x=scale * data.sample(256)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        l0s.append(float(out.l0))
    return l0s


def _overshoots(l0s: list[float], target: float, band: float = 0.15, window: int = 10) -> int:
    """How often the windowed mean of L0 leaves the target band on the other side from its last excursion."""
    means = [sum(l0s[i : i + window]) / window for i in range(0, len(l0s), window)]
    sides = [(m > target * (1 + band)) - (m < target * (1 - band)) for m in means]
    sides = [s for s in sides if s]
    return sum(a != b for a, b in zip(sides, sides[1:], strict=False))


def test_proportional_gain_damps_the_l0_controller():
    """Integral control alone overshoots the target back and forth on this planted problem (L0 answers lambda
    only after Adam has moved the weights); the proportional term settles it inside the band without crossing."""
    undamped, damped = _controlled_l0(gain=0.0), _controlled_l0(gain=1.0)
    assert _overshoots(undamped, 6) >= 2
    assert _overshoots(damped, 6) == 0
    assert 6 * 0.85 < sum(damped[-100:]) / 100 < 6 * 1.15


def _sparse_calls(monkeypatch, cls) -> list[int]:
    """Counts the steps that take `cls`'s sparse path."""
    calls: list[int] = []
    sparse = cls._sparse_forward
    monkeypatch.setattr(cls, "_sparse_forward", lambda self, *a: calls.append(1) or sparse(self, *a))
    return calls


def _step(sae, x, target, took_sparse: bool, sparse_calls: list[int]):
    """One training step's output and gradients, checked to have taken the path asked for; and detached copies
    of the parameters for the reference formula."""
    out = sae.training_forward(TrainStepInput(x=x, target=target, sparsity_warmup=0.5))
    out.loss.backward()
    assert len(sparse_calls) == took_sparse
    got = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    return out, got, {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}


def _assert_step_equals(out, got, ref, x_hat, z, losses) -> None:
    """The step's reconstruction, loss terms, firing counts and gradients equal the reference's (whose losses
    have been backpropagated into ref)."""
    torch.testing.assert_close(out.x_hat, x_hat.detach())
    assert out.losses.keys() == losses.keys()
    for name, value in losses.items():
        torch.testing.assert_close(out.losses[name], value.detach(), msg=name)
    torch.testing.assert_close(out.fired, (z > 0).sum(0).double())
    assert out.l0.item() == pytest.approx((z > 0).sum().item() / z.shape[0])
    assert got.keys() == {n for n, r in ref.items() if r.grad is not None}
    for name, grad in got.items():
        torch.testing.assert_close(grad, ref[name].grad, msg=name)


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("max_density", [0.0, 1.0], ids=["dense", "sparse"])
def test_standard_step_equals_the_dense_formula_on_either_path(monkeypatch, max_density, kind):
    """The sparse path (active pairs only) and the dense one give the hand-written loss, reconstruction, firing
    counts and gradients (float64), with tokens that fire nothing and latents that never fire."""
    from saeforge.sae.standard import StandardTrainingSAE

    monkeypatch.setattr(StandardTrainingSAE, "sparse_max_density", max_density)
    sparse_calls = _sparse_calls(monkeypatch, StandardTrainingSAE)
    d_sae, B, d_out = 40, 16, (D_IN if kind == "sae" else D_IN + 3)
    layout = {} if kind == "sae" else {"kind": "transcoder", "d_out": d_out}
    sae = create_training_sae(dict(architecture="standard", d_in=D_IN, d_sae=d_sae, seed=0,
                                   sparsity_coefficient=0.7, **layout)).double()  # fmt: skip
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.b_enc.sub_(1.0)  # sparse: about one latent in six fires
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    x[3] = sae.b_pre.detach()  # pre = b_enc < 0 everywhere: this token fires nothing
    y = x if kind == "sae" else torch.randn(B, d_out, generator=g, dtype=torch.float64)

    target = None if kind == "sae" else y
    out, got, ref = _step(sae, x, target, max_density == 1.0, sparse_calls)
    z = ((x - ref["b_dec" if kind == "sae" else "b_in"]) @ ref["W_enc"] + ref["b_enc"]).relu()
    x_hat = z @ ref["W_dec"] + ref["b_dec"]
    losses = {
        "mse": (x_hat - y).pow(2).sum(-1).mean(),
        "l1": 0.35 * (z * ref["W_dec"].norm(dim=1)).sum(-1).mean(),
    }
    sum(losses.values()).backward()

    assert (z[3] == 0).all() and ((z > 0).sum(0) == 0).any() and (z > 0).float().mean() < 1 / 4
    _assert_step_equals(out, got, ref, x_hat, z, losses)


def _perturbed(arch: str, d_sae: int, seed: int, **cfg):
    sae = create_training_sae(dict(architecture=arch, d_in=D_IN, d_sae=d_sae, seed=0, **cfg)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return sae, g


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(sparsity_loss="l0"),
        dict(sparsity_loss="l0", l0_pre_gradient=True),
        dict(pre_act_coefficient=0.0),
    ],
    ids=["tanh+pre_act", "l0", "l0-to-pre", "tanh"],
)
@pytest.mark.parametrize("kind", ["sae", "transcoder"])
@pytest.mark.parametrize("max_density", [0.0, 1.0], ids=["dense", "sparse"])
def test_jumprelu_step_equals_the_dense_formula_on_either_path(monkeypatch, max_density, kind, variant):
    """The sparse path (firing pairs and the STE band below theta only, the pre-activation loss as a column sum)
    gives the dense formula's losses, reconstruction, firing counts and gradients (float64), with pairs inside
    the band on both sides of theta, a token that fires nothing and latents that never fire."""
    from saeforge.sae.jumprelu import JumpReLUTrainingSAE

    monkeypatch.setattr(JumpReLUTrainingSAE, "sparse_max_density", max_density)
    sparse_calls = _sparse_calls(monkeypatch, JumpReLUTrainingSAE)
    d_sae, B, eps, mu = 40, 16, 0.4, 0.3
    d_out = D_IN if kind == "sae" else D_IN + 3
    layout = {} if kind == "sae" else {"kind": "transcoder", "d_out": d_out}
    cfg = {"sparsity_coefficient": 0.7, "bandwidth": eps, "pre_act_coefficient": mu, **layout, **variant}
    sae, g = _perturbed("jumprelu", d_sae, 3, **cfg)
    with torch.no_grad():
        sae.b_enc.sub_(1.0)
        sae.threshold.copy_(0.6 * torch.rand(d_sae, generator=g, dtype=torch.float64))
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    x[3] = sae.b_pre.detach()  # pre = b_enc < 0 everywhere: this token fires nothing
    y = x if kind == "sae" else torch.randn(B, d_out, generator=g, dtype=torch.float64)

    out, got, ref = _step(sae, x, None if kind == "sae" else y, max_density == 1.0, sparse_calls)
    pre = (x - ref["b_dec" if kind == "sae" else "b_in"]) @ ref["W_enc"] + ref["b_enc"]
    theta, norms, c = ref["threshold"], ref["W_dec"].norm(dim=1), sae.cfg
    z = JumpReLUFunction.apply(pre, theta, eps)
    x_hat = z @ ref["W_dec"] + ref["b_dec"]
    losses = {"mse": (x_hat - y).pow(2).sum(-1).mean()}
    if c.sparsity_loss == "tanh":
        losses["tanh"] = 0.35 * (z * norms).tanh().sum(-1).mean()
    else:
        losses["l0"] = 0.35 * StepFunction.apply(pre, theta, eps, c.l0_pre_gradient).sum(-1).mean()
    if c.pre_act_coefficient:
        losses["pre_act"] = c.pre_act_coefficient * ((theta.detach() - pre).relu() * norms).sum(-1).mean()
    sum(losses.values()).backward()

    p = pre.detach()
    band = (p - theta.detach()).abs() < eps / 2
    assert (band & (p < theta.detach())).sum() >= 5 and (band & (p > theta.detach())).sum() >= 5
    assert (z[3] == 0).all() and ((z > 0).sum(0) == 0).any() and (z > 0).float().mean() < 1 / 4
    _assert_step_equals(out, got, ref, x_hat, z, losses)


@pytest.mark.parametrize("max_density", [0.0, 1.0], ids=["dense", "sparse"])
def test_gated_step_equals_the_paper_formula_on_either_path(monkeypatch, max_density):
    """The sparse path (open gates only, pi_mag from the gate's values) gives the paper's losses, reconstruction,
    firing counts and gradients (float64), with a token whose gates are all shut and open gates whose magnitude
    is negative (they open but do not fire)."""
    from saeforge.sae.gated import GatedTrainingSAE

    monkeypatch.setattr(GatedTrainingSAE, "sparse_max_density", max_density)
    sparse_calls = _sparse_calls(monkeypatch, GatedTrainingSAE)
    d_sae, B = 40, 16
    sae, g = _perturbed("gated", d_sae, 4, sparsity_coefficient=0.7)
    with torch.no_grad():
        sae.b_gate.sub_(1.0)
        sae.b_mag.sub_(1.0)  # some open gates get a negative magnitude
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    x[3] = sae.b_dec.detach()  # pi_gate = b_gate < 0 everywhere: this token's gates are shut

    out, got, ref = _step(sae, x, None, max_density == 1.0, sparse_calls)
    xc = x - ref["b_dec"]
    pi_gate = xc @ ref["W_enc"] + ref["b_gate"]
    pi_mag = xc @ (ref["W_enc"] * ref["r_mag"].exp()) + ref["b_mag"]
    z = (pi_gate > 0) * pi_mag.relu()
    x_hat = z @ ref["W_dec"] + ref["b_dec"]
    gate_acts = pi_gate.relu()
    losses = {
        "mse": (x_hat - x).pow(2).sum(-1).mean(),
        "l1": 0.35 * (gate_acts * ref["W_dec"].norm(dim=1)).sum(-1).mean(),
        "aux": (gate_acts @ ref["W_dec"].detach() + ref["b_dec"].detach() - x).pow(2).sum(-1).mean(),
    }
    sum(losses.values()).backward()

    opened = pi_gate.detach() > 0
    assert (opened & (pi_mag.detach() < 0)).sum() >= 3 and (z > 0).sum() >= 10
    assert not opened[3].any() and opened.float().mean() < 1 / 4
    _assert_step_equals(out, got, ref, x_hat, z, losses)
