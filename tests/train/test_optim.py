"""The trainer's Adam: equal to torch.optim.Adam, copy-free on column-major parameters, and loud on a torch that
changed the private method it overrides."""

from __future__ import annotations

import inspect

import pytest
import torch

from saeforge.train import optim
from saeforge.train.optim import Adam


@pytest.mark.parametrize(("column_major", "grad_layout"), [(False, "param"), (True, "param"), (True, "row")])
def test_adam_matches_torch_adam(column_major, grad_layout):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(24, 7, generator=g)
    init = [base.t() if column_major else base.t().contiguous(), torch.randn(7, generator=g)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    storage = [p.data_ptr() for p in ours]
    opt_ours = Adam(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
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
    fresh = Adam(ours, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    fresh.load_state_dict(state)
    assert fresh.state[ours[0]]["exp_avg"].stride() == ours[0].stride()
    torch.testing.assert_close(fresh.state[ours[0]]["exp_avg"], opt_ours.state[ours[0]]["exp_avg"])


def test_override_matches_this_torch_and_runs():
    """Fails loudly when a torch release changes Adam._init_group (the override would silently stop applying)."""
    assert tuple(inspect.signature(torch.optim.Adam._init_group).parameters) == optim.INIT_GROUP_PARAMETERS
    assert tuple(inspect.signature(Adam._init_group).parameters) == optim.INIT_GROUP_PARAMETERS
    calls = []
    original = Adam._init_group

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    p = torch.nn.Parameter(torch.randn(3, 4).t())
    opt = Adam([p], lr=0.1)
    opt._init_group = counting.__get__(opt)
    p.grad = torch.ones_like(p)
    opt.step()
    assert calls, "torch's Adam.step no longer calls _init_group"


def test_a_changed_torch_method_is_refused(monkeypatch):
    def changed(
        self, group, params_with_grad, grads, amsgrad, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
    ):
        raise AssertionError("not called")

    monkeypatch.setattr(torch.optim.Adam, "_init_group", changed)
    optim.check_torch_adam.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="changed torch.optim.Adam._init_group"):
            Adam([torch.nn.Parameter(torch.zeros(2))])
    finally:
        optim.check_torch_adam.cache_clear()


def test_schedule_free_signum_matches_float64_reference():
    """Three steps of ScheduleFreeSignum (varying lr, a column-major parameter) equal the paper's recursion
    written out naively in float64, and use_average hands over x."""
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(6, 5, generator=g).t(), torch.randn(4, generator=g)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = optim.ScheduleFreeSignum(params, lr=0.1, beta=0.9)
    ref = [{"y": t.double().clone(), "z": t.double().clone(), "x": t.double().clone()} for t in init]
    weight_sum = 0.0
    for lr in (0.05, 0.1, 0.2):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        weight_sum += lr * lr
        c = lr * lr / weight_sum
        for r, gr in zip(ref, grads, strict=True):
            r["z"] = r["z"] - lr * torch.sign(gr.double())
            r["x"] = (1 - c) * r["x"] + c * r["z"]
            r["y"] = 0.1 * r["z"] + 0.9 * r["x"]
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.double(), r["y"], rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["z"].double(), r["z"], rtol=0, atol=1e-6)
    assert params[0].stride() == init[0].stride()
    restored = optim.ScheduleFreeSignum(params, lr=0.1, beta=0.9)
    restored.load_state_dict(opt.state_dict())
    assert restored.state[params[0]]["z"].stride() == params[0].stride()
    opt.use_average()
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.double(), r["x"], rtol=0, atol=1e-6)
