"""The causal check: does removing the fine-tune-only latents make the fine-tuned model behave like the base one?

On contexts tokens [n, T], with p_base and p_ft the two models' next-token distributions, the fine-tuned model is
run again with its activation at the hook replaced by

    a_ft  ->  a_ft - sum_{j in S} z_j(a_base, a_ft) W_dec[j, finetuned]

(z from the crosscoder reading both models' activations at the same position; the base activation comes from a
forward pass of the base model). With KL = mean over scored positions of KL(p_base || p), the check reports

    fraction_closed(S) = 1 - KL(p_base || p_ft with S removed) / KL(p_base || p_ft)

for S = the fine-tune-only latents, and the same for `n_controls` random sets of as many latents drawn from the
other live latents (the control). Special tokens keep their activation and are not scored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeforge.diff.coder import FINETUNED, PairCoder
from saeforge.eval.downstream import model_forward


def _removal(coder: PairCoder, base_act: Tensor, latent_ids: Tensor, special: Tensor):
    W = coder.W_dec.detach()[latent_ids, FINETUNED]  # [|S|, d_in]

    def replace(act: Tensor) -> Tensor:
        x = torch.stack([base_act, act], dim=-2).to(W.dtype)  # [B, T, 2, d_in]
        z = coder.encode(x)[..., latent_ids]
        new = (x[..., FINETUNED, :] - z @ W).to(act.dtype)
        return torch.where(special[..., None].to(act.device), act, new)

    return replace


def _kl_sum(logits_ref: Tensor, logits: Tensor, scored: Tensor) -> float:
    logp_ref = F.log_softmax(logits_ref.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)
    return float(kl[scored.to(kl.device)].double().sum())


def _recorded(forward, tok: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, the activation at the hook) of one clean forward pass."""
    seen: list[Tensor] = []

    def keep(act: Tensor) -> Tensor:
        seen.append(act)
        return act

    return forward(tok, keep), seen[0]


@torch.no_grad()
def causal_check(
    base_model: Any,
    finetuned_model: Any,
    hook: str,
    coder: PairCoder,
    tokens: Tensor,
    special: Tensor,
    latent_ids: list[int],
    control_pool: list[int],
    n_controls: int = 3,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Fraction of KL(p_base || p_ft) closed by removing `latent_ids` vs random sets from `control_pool`.

    base_model, finetuned_model: saeforge.models.LoadedModel (causal). tokens, special: [n, T] contexts and their
    special-token mask (saeforge.eval.downstream.contexts_from_source gives both).
    """
    if not latent_ids:
        raise ValueError(
            "the causal check needs at least one latent to remove (no fine-tune-only latents found)"
        )
    for m in (base_model, finetuned_model):
        if m.kind != "causal":
            raise ValueError(f"the causal check needs causal LMs; {m.path} is a {m.kind} model")
    pool = [j for j in control_pool if j not in set(latent_ids)]
    g = torch.Generator().manual_seed(seed)
    n = len(latent_ids)
    controls = [
        [pool[i] for i in torch.randperm(len(pool), generator=g)[:n].tolist()] for _ in range(n_controls)
    ] if len(pool) >= n else []  # fmt: skip
    sets = [latent_ids, *controls]
    base_fwd, ft_fwd = model_forward(base_model, hook), model_forward(finetuned_model, hook)
    kl_clean, kl_removed, scored_total = 0.0, [0.0] * len(sets), 0
    for start in range(0, tokens.shape[0], batch_size):
        tok, spec = tokens[start : start + batch_size], special[start : start + batch_size]
        logits_base, base_act = _recorded(base_fwd, tok)
        logits_ft = ft_fwd(tok, None)
        scored = ~spec
        scored_total += int(scored.sum())
        kl_clean += _kl_sum(logits_base, logits_ft, scored)
        for i, ids in enumerate(sets):
            idx = torch.tensor(ids, dtype=torch.long, device=coder.W_dec.device)
            logits = ft_fwd(tok, _removal(coder, base_act, idx, spec))
            kl_removed[i] += _kl_sum(logits_base, logits, scored)
    if scored_total == 0:
        raise ValueError("no position could be scored: every context is made of special tokens")
    kl_clean /= scored_total
    kl_removed = [k / scored_total for k in kl_removed]

    def closed(kl: float) -> float | None:
        return 1.0 - kl / kl_clean if kl_clean > 0 else None

    ctrl = [closed(k) for k in kl_removed[1:]]
    return {
        "latents": list(latent_ids),
        "positions_scored": scored_total,
        "kl_base_finetuned": kl_clean,
        "kl_after_removal": kl_removed[0],
        "fraction_closed": closed(kl_removed[0]),
        "control": {
            "latents": controls,
            "kl_after_removal": kl_removed[1:],
            "fraction_closed": ctrl,
            "fraction_closed_mean": sum(ctrl) / len(ctrl) if ctrl and None not in ctrl else None,
        },
    }
