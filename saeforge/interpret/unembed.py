"""Output tokens a decoder direction promotes and suppresses, read through the model's unembedding.

For latent i with decoder row d = W_dec[i] [d_in] written into the residual stream, the direct effect on the
logits is d @ W_U (W_U [d_model, vocab], the `lm_head`). With `through_norm=True` the final norm is taken into
account as a linear map at the direction itself: norm(d) - norm(0). For LayerNorm that is
gamma * (d - mean(d)) / std(d), for RMSNorm gamma * d / rms(d) (Gemma's (1 + weight) included, since the
model's own module is called): the true effect at a given token also divides by that token's residual scale,
which is a positive number and so changes no ranking. Values are comparable within a latent, not across
latents. Only meaningful when the SAE's hook writes into the residual stream (resid_pre/resid_post/mlp_out/
attn_out of a causal LM).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saeforge.interpret.records import TokenScore

_NORM_NAMES = ("ln_f", "final_layer_norm", "norm", "final_norm", "ln_final")


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied before the unembedding (GPT-2 `ln_f`, GPT-NeoX `final_layer_norm`, Llama `norm`)."""
    base = getattr(model, "base_model", model)
    for name in _NORM_NAMES:
        mod = getattr(base, name, None)
        if isinstance(mod, nn.Module):
            return mod
    return None


def unembedding(model: nn.Module) -> Tensor:
    """W_U [d_model, vocab] of a causal LM (the output embedding's weight, transposed)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise ValueError(
            f"{type(model).__name__} has no output embedding: promoted/suppressed tokens need a causal LM"
        )
    return head.weight.detach().T


@torch.no_grad()
def direction_logits(model: nn.Module, directions: Tensor, through_norm: bool = True) -> Tensor:
    """directions [L, d_model] -> [L, vocab] direct logit effect (see module docstring for the norm)."""
    W_U = unembedding(model)
    d = directions.to(device=W_U.device, dtype=W_U.dtype)
    norm = final_norm(model) if through_norm else None
    if norm is not None:
        d = norm(d) - norm(torch.zeros_like(d))
    return (d @ W_U).float().cpu()


def top_token_scores(logits: Tensor, decode, n: int = 10) -> tuple[list[TokenScore], list[TokenScore]]:
    """logits [vocab] -> (n most promoted, n most suppressed) as TokenScores (decode: ids -> strings)."""
    n = min(n, logits.shape[0])
    up = logits.topk(n)
    down = (-logits).topk(n)
    ups = [
        TokenScore(i, s, v)
        for i, s, v in zip(up.indices.tolist(), decode(up.indices.tolist()), up.values.tolist(), strict=True)
    ]
    downs = [
        TokenScore(i, s, -v)
        for i, s, v in zip(
            down.indices.tolist(), decode(down.indices.tolist()), down.values.tolist(), strict=True
        )
    ]
    return ups, downs
