"""Which latents raise or lower one target token's logit for a prompt.

Direct effect (at the prompt's last position, hook h, latent activations z = encode(x_h)):

    direct_i = z_i * (N(W_dec[i]) @ W_U[:, target])

where N is the final norm linearised with its scale frozen at the actual final residual r of that position:
LayerNorm: N(v) = gamma * (v - mean(v)) / sqrt(var(r) + eps); RMSNorm: N(v) = g * v / sqrt(mean(r^2) + eps),
with g read off the module (g = norm(1) * sqrt(1 + eps), so Gemma's (1 + weight) is covered). This is the
direct path only: it ignores every layer between the hook and the unembedding; for a hook at the last block's
resid_post it is exact up to freezing the norm's scale (then the direct effects of all latents, of b_dec and
of the SAE's error add up to the target logit minus the norm's bias term).

Ablation (total effect): the prompt is re-run with the latent's contribution z_i * W_dec[i] removed from the
hook's activation at every position (z recomputed from the activation there); the table shows the change of
the target logit at the last position (negative for a latent that was raising it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from saeforge.interpret.config import target_token_id
from saeforge.interpret.unembed import final_norm, unembedding
from saeforge.models import LoadedModel, splice
from saeforge.sae.base import SAE


@dataclass
class AttributionRow:
    latent: int
    activation: float
    direct: float
    ablation: float | None = None


@dataclass
class Attribution:
    """Result for one prompt / target: rows sorted by direct effect (raisers first, then lowerers)."""

    prompt: str
    target: str
    target_id: int
    hook: str
    target_logit: float
    direct_sum: float
    rows: list[AttributionRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def frozen_norm_map(norm: nn.Module | None, r: Tensor) -> Tensor:
    """The final norm as a linear map with its scale frozen at r [d]: returns M [d, d] with N(v) = v @ M."""
    d = r.shape[-1]
    eye = torch.eye(d, dtype=r.dtype, device=r.device)
    if norm is None:
        return eye
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))
    if isinstance(norm, nn.LayerNorm):
        gamma = norm.weight.detach().to(r.dtype) if norm.weight is not None else torch.ones_like(r)
        scale = torch.sqrt(r.var(unbiased=False) + eps)
        center = eye - 1.0 / d
        return center * gamma / scale
    with torch.no_grad():
        ones = torch.ones(1, d, dtype=r.dtype, device=r.device)
        g = (norm(ones)[0] * (1 + eps) ** 0.5).to(r.dtype)
    scale = torch.sqrt((r**2).mean() + eps)
    return torch.diag(g / scale)


@torch.no_grad()
def attribute(
    loaded: LoadedModel,
    sae: SAE,
    prompt: str,
    target: str,
    hook: str | None = None,
    top: int = 10,
    ablate: int = 5,
) -> Attribution:
    """Direct effects of the active latents on `target`'s logit after `prompt`, and ablations of the top ones.

    Rows: the `top` latents raising the logit most and the `top` lowering it most (by direct effect); the
    `ablate` largest |direct| of them also get the ablation effect.
    """
    if loaded.kind != "causal":
        raise ValueError(
            f"{loaded.path} is an {loaded.kind} model (not a causal LM): attribution needs a causal LM's logits"
        )
    hook = hook or sae.cfg.metadata.get("hook_name")
    if not hook:
        raise ValueError("the SAE's cfg.json names no hook_name: pass --hook")
    tid = target_token_id(loaded.tokenizer, target)
    enc = loaded.tokenizer(prompt, return_tensors="pt")
    input_ids = enc["input_ids"].to(loaded.device)
    if input_ids.shape[1] == 0:
        raise ValueError("--prompt is empty")
    model = loaded.model
    norm = final_norm(model)
    seen: dict[str, Tensor] = {}

    def keep(x: Tensor) -> Tensor:
        seen["x"] = x.detach()
        return x

    handle = (
        norm.register_forward_pre_hook(lambda _m, args: seen.__setitem__("r", args[0].detach()))
        if norm
        else None
    )
    try:
        with splice(loaded, hook, keep):
            logits = model(input_ids=input_ids).logits
    finally:
        if handle is not None:
            handle.remove()
    clean = float(logits[0, -1, tid])
    x = seen["x"][0, -1]
    w = sae.W_enc
    z = sae.encode(x.to(device=w.device, dtype=w.dtype)).float()
    W_U = unembedding(model).float()
    r = seen["r"][0, -1].float() if norm is not None else x.float()
    u = frozen_norm_map(norm, r) @ W_U[:, tid]
    per_latent = z * (sae.W_dec.detach().float() @ u.to(z.device))
    active = torch.nonzero(z > 0).flatten()
    order = active[per_latent[active].argsort(descending=True)]
    raisers = [i for i in order.tolist() if per_latent[i] > 0][:top]
    lowerers = [i for i in reversed(order.tolist()) if per_latent[i] < 0][:top]
    rows = [AttributionRow(i, float(z[i]), float(per_latent[i])) for i in raisers + lowerers]
    for row in sorted(rows, key=lambda r_: -abs(r_.direct))[:ablate]:
        row.ablation = ablation_effect(loaded, sae, hook, input_ids, tid, row.latent) - clean
    return Attribution(prompt, target, tid, hook, clean, float(per_latent.sum()), rows)


def ablation_effect(
    loaded: LoadedModel, sae: SAE, hook: str, input_ids: Tensor, tid: int, latent: int
) -> float:
    """Target logit at the last position with latent's z_i * W_dec[i] removed at every position of `hook`."""
    d = sae.W_dec.detach()[latent]

    def remove(x: Tensor) -> Tensor:
        w = sae.W_enc
        z_i = sae.encode(x.to(device=w.device, dtype=w.dtype))[..., latent]
        return x - (z_i.unsqueeze(-1) * d).to(device=x.device, dtype=x.dtype)

    with torch.no_grad(), splice(loaded, hook, remove):
        return float(loaded.model(input_ids=input_ids).logits[0, -1, tid])
