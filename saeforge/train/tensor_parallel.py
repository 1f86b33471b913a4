"""Latent sharding (tensor parallelism): each SAE's d_sae latents split over T ranks, the batch over D.

torchrun starts N = T x D ranks (`tensor_parallel: T`). Rank r = d * T + t holds latents
[t * d_sae / T, (t + 1) * d_sae / T) of every SAE: those columns of W_enc, rows of W_dec, entries of b_enc and of
the JumpReLU threshold, their Adam moments and their dead-latent counters; and it reads data-parallel slice d of
every global batch. The T ranks of a tensor group share their rows; the D ranks of a data group share latents.

One step of shard t on the group's rows x [B, d_in]:

    pre_t = (x - b_dec) @ W_enc[:, t] + b_enc[t]                   [B, d_sae / T]
    TopK      each shard offers its k largest (value, latent); one all-gather over the tensor group; the k
              largest of the T * k offers are exactly the token's top k over all latents
    BatchTopK the batch threshold is the (k * B_global)-th largest offer of all N ranks (sae/batchtopk.py runs
              unchanged: its collectives span every rank, its world_size is D)
    JumpReLU  per latent, no selection
    AuxK      like TopK, among the dead latents of every shard
    x_hat   = sum_t z_t @ W_dec[t] + b_dec                         one all-reduce of [B, d_in] per decode

Gradients. Every rank of a tensor group computes the same loss from the same x_hat, so the gradient of its own
latents' parameters is exact. b_dec is replicated: its decoder term is whole on every rank, its encoder term
(through b_dec @ W_enc) is a sum over shards, all-reduced in the backward of `b_pre`. Gradients are then averaged
over the data group only. Unit-norm decoder constraints are per latent (local); gradient clipping uses the
norm of the whole SAE. A loss term that is a sum over latents (JumpReLU's L0) is summed over the tensor group
for its value, with this shard's part carrying the gradient.

Initialisation: every rank builds the whole SAE from its seed, as one process does, and keeps its slice.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saeforge import sae as sae_api
from saeforge.distributed import DistContext, TorchCollectives
from saeforge.errors import ConfigError
from saeforge.sae.kernels import Pairs

# The architectures latent sharding supports, with their loss terms that are sums over latents.
SHARDABLE: dict[str, tuple[str, ...]] = {
    "topk": (),
    "batchtopk": (),
    "jumprelu": ("l0", "tanh", "pre_act"),
}
# Parameters (and their Adam moments) indexed by latent, and the dim that does.
LATENT_DIMS = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}


def latent_dim(name: str, ndim: int) -> int | None:
    """The latent dim of parameter or buffer `name` with `ndim` dims, or None when it is replicated."""
    dim = LATENT_DIMS.get(name.rsplit(".", 1)[-1])
    return dim if dim is not None and ndim > dim else None


class _SumForward(torch.autograd.Function):
    """Sum over the tensor group; the backward is the identity (each rank's loss is the same function of it)."""

    @staticmethod
    def forward(ctx, t: Tensor, group: Any) -> Tensor:
        out = t.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _SumGrad(torch.autograd.Function):
    """The identity; the backward sums the gradient over the tensor group (each shard's is its latents' part)."""

    @staticmethod
    def forward(ctx, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _cat_over(t: Tensor, group: Any, size: int, dim: int) -> Tensor:
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim)


class LatentShard:
    """Mixin composed with a TopK, BatchTopK or JumpReLU training class: one rank's d_sae / T latents.

    Latent indices inside the shard are local; a selected latent another shard holds is -1 in a per-token
    selection [B, w] and left out of this shard's pairs.
    Set by `Mesh.build`: tp_group, tp (T), offset (the shard's first latent).
    """

    latent_sum_terms: tuple[str, ...] = ()
    tp_group: Any
    tp: int
    offset: int

    @property
    def b_pre(self) -> Tensor:
        return _SumGrad.apply(super().b_pre, self.tp_group)

    def _sum(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, group=self.tp_group)
        return out

    @torch.no_grad()
    def _topk(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n = pre.shape[1]
        vals, idx = super()._topk(pre, min(k, n))
        vals = _cat_over(vals, self.tp_group, self.tp, 1)
        idx = _cat_over(idx + self.offset, self.tp_group, self.tp, 1)
        vals, j = vals.topk(k, dim=1, sorted=False)
        idx = idx.gather(1, j) - self.offset
        return vals, torch.where((idx >= 0) & (idx < n), idx, -1)

    @torch.no_grad()
    def _dead_topk(self, pre: Tensor, dead_mask: Tensor | None) -> Tensor | None:
        if dead_mask is None:
            return None
        dead_mask = dead_mask.to(pre.device)
        n_dead = int(self._sum(dead_mask.sum()))
        if n_dead == 0:
            return None
        return self._topk(pre.masked_fill(~dead_mask, -math.inf), min(self.k_aux, n_dead))[1]

    def _screens(self, dead_mask: Tensor | None) -> bool:
        """The bf16 screen selects over one rank's whole SAE: a shard (screen: auto) takes the dense GEMM."""
        return False

    def _pairs(self, idx: Tensor) -> Pairs:
        """Only the pairs of this shard's latents (another shard's are -1 in idx)."""
        return Pairs.masked(idx, idx >= 0)

    def _decode_sparse(self, pairs: Pairs, vals: Tensor) -> Tensor:
        return _SumForward.apply(super()._decode_sparse(pairs, vals), self.tp_group)

    def decode(self, z: Tensor) -> Tensor:
        return _SumForward.apply(z @ self.W_dec, self.tp_group) + self.b_dec

    def init_from_data(self, *args, **kwargs) -> None:
        """The firing-rate initialisation aims each latent at target_l0 / d_sae of the whole SAE: with this
        shard's d_sae / T latents, its share of target_l0 gives the same rate."""
        cfg = self.cfg
        if getattr(cfg, "target_l0", None) is not None:
            self.cfg = cfg.model_copy(update={"target_l0": cfg.target_l0 / self.tp})
        try:
            super().init_from_data(*args, **kwargs)
        finally:
            self.cfg = cfg

    def training_forward(self, inp):
        out = super().training_forward(inp)
        out.l0 = self._sum(out.l0)
        for term in [t for t in self.latent_sum_terms if t in out.losses]:
            part = out.losses[term]
            out.losses[term] = part + (self._sum(part) - part.detach())
        if self.latent_sum_terms:
            out.loss = sum(out.losses.values())
        return out


@functools.cache
def _sharded_class(base: type) -> type:
    return type(
        f"LatentShard[{base.__name__}]",
        (LatentShard, base),
        {"__module__": __name__, "latent_sum_terms": SHARDABLE[base.architecture]},
    )


def check_shardable(resolved: list[Any], tensor_parallel: int) -> None:
    """Raises ConfigError before any work unless every SAE can be latent-sharded over `tensor_parallel` ranks."""
    if tensor_parallel == 1:
        return
    for i, r in enumerate(resolved):
        arch, kind = r.sae_cfg.architecture, r.sae_cfg.kind
        where = f"saes[{i}] ({r.name})"
        if arch not in SHARDABLE or kind != "sae":
            raise ConfigError(
                f"{where}: tensor_parallel {tensor_parallel} shards the latents of {', '.join(SHARDABLE)} SAEs, "
                f"not {arch if kind == 'sae' else kind + 's'}; train this one with tensor_parallel: 1"
            )
        if getattr(r.sae_cfg, "screen", "off") == "bf16":
            raise ConfigError(
                f"{where}.options.screen: the bf16 screen selects over one rank's latents; "
                "set screen: auto (a shard then takes the dense GEMM) or off to train with tensor_parallel > 1"
            )
        if r.d_sae % tensor_parallel:
            raise ConfigError(
                f"{where}.d_sae: {r.d_sae} latents do not split over tensor_parallel {tensor_parallel} ranks; "
                f"choose d_sae a multiple of {tensor_parallel}"
            )


class Mesh:
    """This rank's place in the T x D grid (rank = data rank * T + tensor rank) and the collectives over it.

    With T = 1 every method is the data-parallel trainer's own (`DistContext`), unchanged.
    """

    def __init__(self, ctx: DistContext, tensor_parallel: int):
        n, t = ctx.world_size, tensor_parallel
        if n % t:
            raise ConfigError(
                f"tensor_parallel: {t} does not divide the {n} torchrun ranks; launch "
                f"--nproc_per_node a multiple of {t} (ranks = tensor_parallel x data-parallel ranks)"
            )
        self.ctx, self.tp, self.dp = ctx, t, n // t
        self.tp_rank, self.dp_rank = ctx.rank % t, ctx.rank // t
        self.tp_group = self.dp_group = None  # None: the default group (every rank)
        self.collectives = ctx.collectives
        if t > 1:
            for d in range(self.dp):
                group = dist.new_group(list(range(d * t, (d + 1) * t)))
                self.tp_group = group if d == self.dp_rank else self.tp_group
            if self.dp > 1:
                for r in range(t):
                    group = dist.new_group(list(range(r, n, t)))
                    self.dp_group = group if r == self.tp_rank else self.dp_group
            self.collectives = TorchCollectives(self.dp, ranks=n)

    @property
    def sharded(self) -> bool:
        return self.tp > 1

    def build(self, cfg: Any) -> torch.nn.Module:
        """The training SAE of `cfg` (a TrainingSAEConfig), or this rank's shard of it: the whole SAE is
        initialised as one process would and sliced; defaults that depend on d_sae (k_aux) are the whole's."""
        whole = sae_api.create_training_sae(cfg)
        if not self.sharded:
            return whole
        n = cfg.d_sae // self.tp
        update = {"d_sae": n} | ({"k_aux": whole.k_aux} if hasattr(whole, "k_aux") else {})
        shard = _sharded_class(type(whole))(cfg.model_copy(update=update))
        shard.tp_group, shard.tp, shard.offset = self.tp_group, self.tp, self.tp_rank * n
        full = whole.state_dict()
        with torch.no_grad():
            for name, t in shard.state_dict(keep_vars=True).items():
                dim = latent_dim(name, t.ndim)
                t.copy_(full[name] if dim is None else full[name].narrow(dim, shard.offset, n))
        return shard

    # -- the data group -------------------------------------------------------------------------------

    def dp_sum_(self, t: Tensor) -> Tensor:
        """Sums `t` over the data group in place (the ranks holding the same latents)."""
        if self.dp > 1:
            dist.all_reduce(t, group=self.dp_group)
        return t

    def tp_sum_(self, t: Tensor) -> Tensor:
        """Sums `t` over the tensor group in place (the shards of one SAE)."""
        if self.tp > 1:
            dist.all_reduce(t, group=self.tp_group)
        return t

    def gather_rows(self, x: Tensor) -> Tensor:
        """The data group's slices of a batch, in batch order: x [B / D, d] -> [B, d]."""
        if not self.sharded:
            return self.ctx.collectives.all_gather_cat(x) if self.ctx.enabled else x
        return x if self.dp == 1 else _cat_over(x, self.dp_group, self.dp, 0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copies the first data rank's parameters and buffers to the others of its data group."""
        if not self.sharded:
            return self.ctx.broadcast_module(module)
        if self.dp > 1:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=self.tp_rank, group=self.dp_group)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        self.ctx.average_gradients(params, group=self.dp_group, size=self.dp)

    def clip_grad_norm_(
        self, model: torch.nn.Module, params: list[torch.nn.Parameter], max_norm: float
    ) -> None:
        """torch.nn.utils.clip_grad_norm_ with the norm of the whole SAE (shards' squares summed)."""
        if not self.sharded:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return
        names = {id(p): n for n, p in model.named_parameters()}
        grads = [(p.grad, latent_dim(names[id(p)], p.ndim) is not None) for p in params if p.grad is not None]
        sq = torch.zeros(2, dtype=torch.float32, device=params[0].device)
        for g, sharded in grads:
            sq[int(sharded)] += torch.linalg.vector_norm(g).square()
        total = (sq[0] + self.tp_sum_(sq[1].clone())).sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g, _ in grads:
            g.mul_(coef)

    def dead_fraction(self, dead: Tensor) -> float:
        """The fraction of the whole SAE's latents that are dead, from this shard's mask [d_sae / T]."""
        return float(self.tp_sum_(dead.sum().double())) / (dead.numel() * self.tp)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, counters: list[Tensor]) -> int:
    """Bytes of one rank's training state of an SAE: parameters, buffers, Adam state and dead counters."""
    tensors = [*model.parameters(), *model.buffers(), *counters]
    tensors += [v for st in optimizer.state.values() for v in st.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)
