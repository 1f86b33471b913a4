"""The trainer's optimiser: torch's fused Adam, made copy-free and correct on column-major parameters.

It overrides `torch.optim.Adam._init_group`, a private method: the override is written against the signature
of torch 2.13 (`INIT_GROUP_PARAMETERS`). `check_torch_adam` compares the installed torch's signature with it and
raises before training starts if a torch release changed the method (tests/train/test_optim.py fails too),
instead of silently training with moments in the wrong layout.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

INIT_GROUP_PARAMETERS = (
    "self",
    "group",
    "params_with_grad",
    "grads",
    "exp_avgs",
    "exp_avg_sqs",
    "max_exp_avg_sqs",
    "state_steps",
)


@functools.cache
def check_torch_adam() -> None:
    """Raises RuntimeError if torch.optim.Adam._init_group no longer has the parameters the override expects."""
    method = getattr(torch.optim.Adam, "_init_group", None)
    found = tuple(inspect.signature(method).parameters) if method is not None else ()
    if found != INIT_GROUP_PARAMETERS:
        raise RuntimeError(
            f"torch {torch.__version__} changed torch.optim.Adam._init_group (parameters {found}, expected "
            f"{INIT_GROUP_PARAMETERS}); saeforge.train.optim.Adam overrides it and must be updated for this "
            "torch (pyproject pins torch==2.13.0)"
        )


class Adam(torch.optim.Adam):
    """`torch.optim.Adam(fused=True)` that keeps the fused kernel correct and copy-free on transposed parameters.

    torch's fused CPU kernel copies every non-contiguous tensor to a contiguous one and back, each step: a W_enc
    [d_in, d_sae] stored column-major (rows of W_enc^T, the layout the sparse backward writes) would cost four
    extra passes over 75 MB at d_in=768, d_sae=24576. It also mixes elements up when a gradient's memory layout
    differs from its parameter's (torch 2.13). Adam is elementwise, so this gives every gradient and moment its
    parameter's layout, then runs the kernel on the contiguous transposed views of column-major ones. Same
    arguments, state and state_dict as torch.optim.Adam.
    """

    _MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        check_torch_adam()
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)

    def _init_group(
        self, group, params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
    ):
        has_complex = super()._init_group(
            group, params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
        )
        moments = [exp_avgs, exp_avg_sqs, max_exp_avg_sqs]
        for i, p in enumerate(params_with_grad):
            if grads[i].stride() != p.stride():
                grads[i] = torch.empty_like(p, dtype=grads[i].dtype).copy_(grads[i])
            for name, tensors in zip(self._MOMENTS, moments, strict=True):
                if tensors and tensors[i].stride() != p.stride():
                    tensors[i] = self.state[p][name] = torch.empty_like(p, dtype=tensors[i].dtype).copy_(
                        tensors[i]
                    )
            if p.dim() == 2 and not p.is_contiguous() and p.t().is_contiguous():
                for tensors in (params_with_grad, grads, *moments):
                    if tensors:
                        tensors[i] = tensors[i].t()
        return has_complex

    def load_state_dict(self, state_dict) -> None:
        """Loads like torch.optim.Adam, then gives each moment its parameter's memory layout (checkpoints hold
        contiguous tensors), so that a resumed run takes the same kernel path, bit for bit."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            for name, value in state.items():
                if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class ScheduleFreeSignum(torch.optim.Optimizer):
    """Schedule-free sign descent: Defazio et al. 2024, "The Road Less Scheduled" (arXiv 2405.15682), with
    the sign of the gradient as the base step (signSGD, Bernstein et al. 2018), as EleutherAI's sparsify trains
    SAEs by default.

    Three sequences per parameter: the parameter holds y_t, where the gradient g_t is taken; the state holds the
    base iterate z_t and the average x_t (what is evaluated and exported, `use_average`):

        z_{t+1} = z_t - lr_t * sign(g_t)
        c_{t+1} = lr_t^2 / sum_{i<=t} lr_i^2                  (1 / (t + 1) at a constant lr)
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = (1 - beta) z_{t+1} + beta x_{t+1}

    z_0 = x_0 = y_0. Every state entry is a tensor of the parameter's dtype (checkpoints keep tensors, and
    torch casts them to it on load: a resumed run continues bit for bit), z and x in the parameter's layout.
    """

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.95):
        if not 0 <= beta < 1:
            raise ValueError(f"schedule-free beta must lie in [0, 1), got {beta}")
        super().__init__(params, dict(lr=lr, beta=beta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, beta = group["lr"], group["beta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["z"], st["x"] = p.detach().clone(), p.detach().clone()
                    st["weight_sum"] = torch.zeros((), dtype=p.dtype, device=p.device)
                z, x = st["z"], st["x"]
                z.add_(p.grad.sign(), alpha=-lr)
                st["weight_sum"] += lr * lr
                total = float(st["weight_sum"])
                x.lerp_(z, lr * lr / total if total > 0 else 1.0)
                p.copy_(z).lerp_(x, beta)

    @torch.no_grad()
    def use_average(self) -> None:
        """Sets every parameter to its average x (for evaluation and export; training does not continue)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "x" in self.state[p]:
                    p.copy_(self.state[p]["x"])

    def load_state_dict(self, state_dict) -> None:
        """Loads like torch.optim.Optimizer, then gives z and x their parameter's memory layout."""
        super().load_state_dict(state_dict)
        for p, st in self.state.items():
            for name in ("z", "x"):
                if name in st and st[name].stride() != p.stride():
                    st[name] = torch.empty_like(p).copy_(st[name])


OPTIMIZERS = ("adam", "signum_sf")


def make_optimizer(name: str, params, lr: float, betas: tuple[float, float], eps: float):
    """The optimiser `name` (one of OPTIMIZERS) over params; betas and eps are Adam's, the schedule-free
    interpolation beta of signum_sf is 0.95."""
    if name == "adam":
        return Adam(params, lr=lr, betas=betas, eps=eps)
    if name == "signum_sf":
        return ScheduleFreeSignum(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
