"""Training steps to time: saeforge's architectures (the real `training_forward`, the trainer's optimiser and
hooks) and the plain PyTorch references, at a given shape, with a per-phase split.

A step is what the trainer does per batch: forward, backward, `before_optimizer_step` (the decoder-gradient
projection), Adam, `after_optimizer_step` (renormalisation), `zero_grad(set_to_none=True)`.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.harness import PhaseClock, Timing, time_calls
from bench.reference import PLAIN
from saeforge.sae import create_training_sae, kernels, screen
from saeforge.sae.base import TrainStepInput
from saeforge.train.optim import Adam

TOPK_FAMILY = ("topk", "batchtopk")
DENSE = ("standard", "jumprelu", "gated")
ADAM = ("torch", "foreach", "fused", "saeforge")


@dataclass(frozen=True)
class Shape:
    """B tokens per step, SAE d_in -> d_sae, k active latents per token."""

    name: str
    B: int
    d_in: int
    d_sae: int
    k: int

    @property
    def encoder_flops(self) -> float:
        return 2.0 * self.B * self.d_in * self.d_sae


REALISTIC = Shape("realistic", 4096, 768, 24576, 64)
SMALL = Shape("small", 1024, 256, 8192, 32)
QUICK = Shape("quick", 256, 32, 2048, 8)


def activations(shape: Shape, n: int = 2, seed: int = 0) -> list[Tensor]:
    """n batches [B, d_in] of synthetic activations: a shared mean direction plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape.d_in, generator=g)
    return [mean + torch.randn(shape.B, shape.d_in, generator=g) for _ in range(n)]


def make_adam(params: list[Tensor], kind: str) -> torch.optim.Adam:
    """Adam with the trainer's hyper-parameters: "saeforge" is `Adam` (what saeforge's trainer builds:
    fused, copy-free on column-major W_enc), "torch" is `torch.optim.Adam(...)` with torch's default
    implementation for the device (what a plain PyTorch loop gets), "foreach" / "fused" force torch's others."""
    hyper = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8}
    if kind == "saeforge":
        return Adam(params, **hyper)
    options = {"torch": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
    return torch.optim.Adam(params, **hyper, **options)


def build_saeforge(arch: str, shape: Shape) -> torch.nn.Module:
    """The registry's training SAE for `arch` at this shape (penalty architectures aim at L0 = k)."""
    return create_training_sae(
        {"architecture": arch, "d_in": shape.d_in, "d_sae": shape.d_sae, "k": shape.k, "b_dec_init": "mean"}
    )


def build_plain(arch: str, shape: Shape) -> torch.nn.Module:
    return PLAIN[arch](shape.d_in, shape.d_sae, shape.k)


def _init_adam_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Creates Adam's moments with a zero-gradient step (parameters do not move), so that memory and timings
    start from the steady state."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


class SaeforgeStep:
    """One trainer step of a saeforge training SAE; `clock` splits it into phases when given."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, xs: list[Tensor]):
        self.model, self.opt, self.xs = model, opt, xs
        self.dead_mask = torch.zeros(model.W_dec.shape[0], dtype=torch.bool)
        self.i = 0

    def __call__(self, clock: PhaseClock | None = None) -> None:
        x = self.xs[self.i % len(self.xs)]
        self.i += 1
        c = clock or _NoClock()
        c.enter("forward (other)")
        out = self.model.training_forward(TrainStepInput(x=x, dead_mask=self.dead_mask))
        c.exit()
        c.enter("backward")
        out.loss.backward()
        c.exit()
        c.enter("decoder grad projection")
        self.model.before_optimizer_step()
        c.exit()
        c.enter("optimizer")
        self.opt.step()
        c.exit()
        c.enter("renormalise + zero_grad")
        self.model.after_optimizer_step()
        self.opt.zero_grad(set_to_none=True)
        c.exit()


class PlainStep(SaeforgeStep):
    """One step of a plain PyTorch reference SAE (same phases, no split of the forward)."""

    def __call__(self, clock: PhaseClock | None = None) -> None:
        x = self.xs[self.i % len(self.xs)]
        self.i += 1
        c = clock or _NoClock()
        c.enter("forward (other)")
        loss = self.model.loss(x)
        c.exit()
        c.enter("backward")
        loss.backward()
        c.exit()
        c.enter("decoder grad projection")
        self.model.before_optimizer_step()
        c.exit()
        c.enter("optimizer")
        self.opt.step()
        c.exit()
        c.enter("renormalise + zero_grad")
        self.model.after_optimizer_step()
        self.opt.zero_grad(set_to_none=True)
        c.exit()


class _NoClock:
    def enter(self, name: str) -> None:
        pass

    def exit(self) -> None:
        pass


def _instrument(model: torch.nn.Module, clock: PhaseClock) -> list[tuple[object, str, object]]:
    """Wraps the TopK-family pieces of `model` (and `kernels.topk_select`) so their time lands in named
    phases; returns what to restore."""
    patches = []
    for name, phase in (
        ("_pre_no_grad", "encoder matmul"),
        ("_select", "top-k selection"),
        ("_gather", "gather pre-acts"),
        ("_decode_sparse", "sparse decode"),
        ("_auxk", "auxk"),
    ):
        if hasattr(model, name):
            patches.append((model, name, None))
            setattr(model, name, clock.wrap(phase, getattr(model, name)))
    patches.append((kernels, "topk_select", kernels.topk_select))
    kernels.topk_select = clock.wrap("top-k selection", kernels.topk_select)
    # a screened step (screen: auto on a CPU with native bf16): the bf16 GEMM, the candidates' exact values and
    # the certificate; finding the candidates in the bf16 product (a level, or a top-(k + margin)) still counts
    # as top-k selection
    patches.append((screen, "screened_topk", screen.screened_topk))
    screen.screened_topk = clock.wrap("bf16 screen", screen.screened_topk)
    for name in ("_group_max", "_kth_largest", "_at_least"):
        patches.append((screen, name, getattr(screen, name)))
        setattr(screen, name, clock.wrap("top-k selection", getattr(screen, name)))
    return patches


def _restore(patches: list[tuple[object, str, object]]) -> None:
    for owner, name, original in patches:
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def measure(
    arch: str, shape: Shape, impl: str, steps: int, warmup: int, adam: str = "saeforge"
) -> dict[str, object]:
    """Times `steps` steps of `impl` ("saeforge" or "plain") for `arch` at `shape`, then `steps` more with the
    per-phase split. Returns step Timing, tokens/s and the per-phase medians (seconds)."""
    print(f"[bench] {arch} {impl} adam={adam} at {shape.name}", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    xs = activations(shape)
    if impl == "saeforge":
        model = build_saeforge(arch, shape)
        model.init_from_data(xs[0])
        step_cls = SaeforgeStep
    else:
        model = build_plain(arch, shape)
        step_cls = PlainStep
    opt = make_adam([p for p in model.parameters() if p.requires_grad], adam)
    _init_adam_state(model, opt)
    step = step_cls(model, opt, xs)
    timing = time_calls(step, steps, warmup)
    samples = []
    for _ in range(steps):
        clock = PhaseClock()
        patches = _instrument(model, clock) if impl == "saeforge" else []
        try:
            step(clock)
        finally:
            _restore(patches)
        samples.append(clock.phases)
    names = list(dict.fromkeys(n for s in samples for n in s))
    phases = {n: statistics.median(s.get(n, 0.0) for s in samples) for n in names}
    return {
        "arch": arch,
        "impl": impl,
        "adam": adam,
        "shape": shape.name,
        "step": timing.as_dict(),
        "tokens_per_s": shape.B / timing.median,
        "phases": phases,
    }


def measure_adam(shape: Shape, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """opt.step() alone over a TopK SAE's parameters (W_enc column-major, as saeforge stores it) with fixed
    random gradients in the parameters' layouts, for each Adam variant."""
    g = torch.Generator().manual_seed(0)
    result = {}
    for kind in ADAM:
        params = [
            torch.nn.Parameter(torch.randn(shape.d_sae, shape.d_in, generator=g)),
            torch.nn.Parameter(torch.randn(shape.d_sae, shape.d_in, generator=g).t()),
            torch.nn.Parameter(torch.zeros(shape.d_sae)),
            torch.nn.Parameter(torch.zeros(shape.d_in)),
        ]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).as_strided(p.shape, p.stride())
        opt = make_adam(params, kind)
        t: Timing = time_calls(opt.step, steps, warmup)
        result[kind] = t.as_dict()
    return result
