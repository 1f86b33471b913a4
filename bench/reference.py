"""Plain PyTorch SAEs: the textbook dense implementation of each architecture's math, the baseline saeforge's
architectures are compared with in the same run.

Dense everything: the full [B, d_sae] pre-activations carry autograd, the decoder is a dense matmul, every
gradient is dense, `torch.optim.Adam` with its defaults. Same losses as `saeforge.sae` (AuxK left out of TopK:
with no dead latents it is zero in both).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PlainSAE(nn.Module):
    """W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; subclasses define `loss`."""

    unit_norm_decoder = False

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.k = k
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def loss(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        if self.unit_norm_decoder:
            W = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
            self.W_dec.grad -= (self.W_dec.grad * W).sum(1, keepdim=True) * W

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


class PlainTopK(PlainSAE):
    """z = ReLU(TopK(pre)) scattered into a dense [B, d_sae] tensor; x_hat = z @ W_dec + b_dec."""

    unit_norm_decoder = True

    def loss(self, x: Tensor) -> Tensor:
        pre = self.pre(x)
        top = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        return (z @ self.W_dec + self.b_dec - x).pow(2).sum(-1).mean()


class PlainReLU(PlainSAE):
    """z = ReLU(pre); loss = MSE + lambda * sum_i z_i ||W_dec[i]||."""

    def loss(self, x: Tensor) -> Tensor:
        z = self.pre(x).relu()
        mse = (z @ self.W_dec + self.b_dec - x).pow(2).sum(-1).mean()
        return mse + 1e-3 * (z * self.W_dec.norm(dim=1)).sum(-1).mean()


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.eps / 2).to(pre.dtype)
        return grad * (pre > threshold), (-(threshold / ctx.eps) * near * grad).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.eps / 2).to(pre.dtype)
        return None, (-(1.0 / ctx.eps) * near * grad).sum(0), None


class PlainJumpReLU(PlainSAE):
    """z = pre * H(pre - theta) with rectangle-kernel straight-through gradients; loss = MSE + lambda * L0."""

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        super().__init__(d_in, d_sae, k, seed)
        self.threshold = nn.Parameter(torch.full((d_sae,), 0.05))

    def loss(self, x: Tensor) -> Tensor:
        pre = self.pre(x)
        z = _JumpReLU.apply(pre, self.threshold, 0.05)
        mse = (z @ self.W_dec + self.b_dec - x).pow(2).sum(-1).mean()
        return mse + 1e-3 * _Step.apply(pre, self.threshold, 0.05).sum(-1).mean()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.threshold.clamp_(min=0.0)


class PlainGated(PlainSAE):
    """Gate and magnitude paths sharing W_enc (r_mag); L1 on the gate; auxiliary stop-gradient reconstruction."""

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        super().__init__(d_in, d_sae, k, seed)
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))

    def loss(self, x: Tensor) -> Tensor:
        xc = x - self.b_dec
        pi_gate = xc @ self.W_enc + self.b_enc
        pi_mag = xc @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        gate = pi_gate.relu()
        z = (pi_gate > 0) * pi_mag.relu()
        mse = (z @ self.W_dec + self.b_dec - x).pow(2).sum(-1).mean()
        l1 = (gate * self.W_dec.norm(dim=1)).sum(-1).mean()
        aux = (gate @ self.W_dec.detach() + self.b_dec.detach() - x).pow(2).sum(-1).mean()
        return mse + 1e-3 * l1 + aux


class PlainBatchTopK(PlainSAE):
    """z keeps the k * B largest ReLU'd pre-activations of the whole batch (one flat top-k)."""

    unit_norm_decoder = True

    def loss(self, x: Tensor) -> Tensor:
        acts = self.pre(x).relu()
        top = acts.flatten().topk(self.k * x.shape[0])
        z = torch.zeros_like(acts).flatten().scatter(0, top.indices, top.values).view_as(acts)
        return (z @ self.W_dec + self.b_dec - x).pow(2).sum(-1).mean()


PLAIN: dict[str, type[PlainSAE]] = {
    "topk": PlainTopK,
    "batchtopk": PlainBatchTopK,
    "standard": PlainReLU,
    "jumprelu": PlainJumpReLU,
    "gated": PlainGated,
}
