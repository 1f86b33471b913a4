"""What the SAE does to the model: splice its reconstruction at the hook and compare the outputs.

Causal models: cross-entropy of next-token prediction and KL to the clean distribution, with the
reconstruction, with the activation zeroed and with it replaced by its mean; scores as in SAELens/SAEBench:
ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean), kl_div_score = (KL_ablation - KL_sae) / KL_ablation.
Encoder models: cosine between the mean-pooled final hidden state with and without the splice.
Special tokens (BOS/EOS/PAD/CLS/SEP) keep their activation and are not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saeforge.sae.base import SAE

Replace = Callable[[Tensor], Tensor]
# forward(tokens [B, T], replace or None) -> logits [B, T, vocab] (causal) or final hidden [B, T, d_model] (encoder)
Forward = Callable[[Tensor, Replace | None], Tensor]


def _keep_special(fn: Replace, special: Tensor) -> Replace:
    """Wraps fn so that positions where special [B, T] is True keep their original activation."""

    def replace(act: Tensor) -> Tensor:
        new = fn(act).to(act.dtype)
        return torch.where(special.to(act.device)[..., None], act, new)

    return replace


def sae_replacement(sae: SAE) -> Replace:
    """act [B, T, d_in] -> the SAE's reconstruction, in the activation's dtype."""
    p = sae.W_dec
    return lambda act: sae(act.to(p.device, p.dtype)).to(act.device, act.dtype)


def ablations(mean_activation: Tensor) -> dict[str, Replace]:
    """Zero ablation and mean ablation (replace by mean_activation [d_in])."""
    return {
        "zero": torch.zeros_like,
        "mean": lambda act: mean_activation.to(act.device, act.dtype).expand_as(act),
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den != 0 else None


def _measure(
    kind: str, clean: Tensor, tok: Tensor, spec: Tensor
) -> tuple[int, float, Callable[[Tensor], tuple]]:
    """(positions scored, clean CE sum, fn: output -> (CE sum, KL sum) or (pooled-cosine sum, 0)) for one batch."""
    if kind == "causal":
        valid = (~spec[:, :-1] & ~spec[:, 1:]).to(clean.device)
        target = tok[:, 1:].to(clean.device)[..., None]
        logp_clean = F.log_softmax(clean[:, :-1].float(), dim=-1)
        p_clean = logp_clean.exp()

        def causal(out: Tensor) -> tuple[float, float]:
            logp = F.log_softmax(out[:, :-1].float(), dim=-1)
            ce = float(-logp.gather(-1, target)[..., 0][valid].double().sum())
            return ce, float((p_clean * (logp_clean - logp)).sum(-1)[valid].double().sum())

        return int(valid.sum()), causal(clean)[0], causal
    keep = (~spec).to(clean.device)
    has = keep.any(1)
    w = keep[..., None].double()
    pooled_clean = (clean.double() * w).sum(1) / w.sum(1).clamp_min(1)

    def encoder(out: Tensor) -> tuple[float, float]:
        pooled = (out.double() * w).sum(1) / w.sum(1).clamp_min(1)
        return float(F.cosine_similarity(pooled, pooled_clean, dim=-1, eps=1e-12)[has].sum()), 0.0

    return int(has.sum()), 0.0, encoder


@torch.no_grad()
def downstream_scores(
    forward: Forward,
    kind: str,
    tokens: Tensor,
    special: Tensor,
    replacements: dict[str, Replace],
    batch_size: int = 8,
    cache: dict | None = None,
) -> dict[str, float | int | None]:
    """Scores the replacements {"sae", "zero", "mean"} on contexts tokens [n, T] (special [n, T] bool).

    kind: "causal" (CE and KL scores) or "encoder" (pooled-output cosines).
    cache: a dict kept by the caller across SAEs evaluated with the same forward, contexts, batch_size and
        ablations; the zero- and mean-ablation passes are then run once, not once per SAE.
    """
    if kind not in ("causal", "encoder"):
        raise ValueError(f"model kind must be 'causal' or 'encoder', got {kind!r}")
    names = ["sae", "zero", "mean"]
    missing = set(names) - set(replacements)
    if missing:
        raise ValueError(f"replacements lack {sorted(missing)}")
    ce = dict.fromkeys(["clean", *names], 0.0)  # pooled-cosine sums for encoders
    kl = dict.fromkeys(names, 0.0)
    scored = 0
    for start in range(0, tokens.shape[0], batch_size):
        tok, spec = tokens[start : start + batch_size], special[start : start + batch_size]
        count, ce_clean, measure = _measure(kind, forward(tok, None), tok, spec)
        scored += count
        ce["clean"] += ce_clean
        for name in names:
            reuse = cache is not None and name != "sae"
            if reuse and (start, name) in cache:
                got = cache[(start, name)]
            else:
                got = measure(forward(tok, _keep_special(replacements[name], spec)))
                if reuse:
                    cache[(start, name)] = got
            ce[name] += got[0]
            kl[name] += got[1]
    if scored == 0:
        raise ValueError("no position could be scored: every context is made of special tokens")
    if kind == "encoder":
        c = {k: v / scored for k, v in ce.items()}
        return {
            "downstream_contexts": scored,
            "pooled_cosine": c["sae"],
            "pooled_cosine_zero_ablation": c["zero"],
            "pooled_cosine_mean_ablation": c["mean"],
            "pooled_cosine_score": _ratio(c["sae"] - c["zero"], 1 - c["zero"]),
        }
    ce = {k: v / scored for k, v in ce.items()}
    kl = {k: v / scored for k, v in kl.items()}
    return {
        "downstream_tokens": scored,
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_mean_ablation": ce["mean"],
        "ce_delta": ce["sae"] - ce["clean"],
        "ce_loss_score": _ratio(ce["zero"] - ce["sae"], ce["zero"] - ce["clean"]),
        "ce_loss_score_mean_ablation": _ratio(ce["mean"] - ce["sae"], ce["mean"] - ce["clean"]),
        "kl_div_with_sae": kl["sae"],
        "kl_div_zero_ablation": kl["zero"],
        "kl_div_mean_ablation": kl["mean"],
        "kl_div_score": _ratio(kl["zero"] - kl["sae"], kl["zero"]),
        "kl_div_score_mean_ablation": _ratio(kl["mean"] - kl["sae"], kl["mean"]),
    }


def model_forward(loaded: Any, hook: str) -> Forward:
    """A `Forward` over a `saeforge.models.LoadedModel`, splicing replacements at `hook`."""
    from saeforge.models import splice

    model = loaded.model
    device = next(model.parameters()).device

    def forward(tokens: Tensor, replace: Replace | None) -> Tensor:
        tokens = tokens.to(device)
        with splice(loaded, hook, replace) if replace is not None else nullcontext():
            out = model(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                output_hidden_states=loaded.kind == "encoder",
            )
        if loaded.kind == "causal":
            return out.logits
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out.hidden_states[-1]

    return forward


@torch.no_grad()
def hook_activations(
    loaded: Any, hook: str, tokens: Tensor, special: Tensor, batch_size: int = 8
) -> Iterable[Tensor]:
    """Yields the activations at `hook` of the non-special tokens, [rows, d_in] per batch of contexts."""
    forward = model_forward(loaded, hook)
    seen: list[Tensor] = []

    def record(act: Tensor) -> Tensor:
        seen.append(act.detach())
        return act

    for start in range(0, tokens.shape[0], batch_size):
        seen.clear()
        forward(tokens[start : start + batch_size], record)
        act = seen[0]
        yield act[~special[start : start + batch_size].to(act.device)].float()


def contexts_from_source(
    source: str, tokenizer: Any, context_size: int, n_contexts: int
) -> tuple[Tensor, Tensor]:
    """Reads SOURCE, packs it into contexts with the model's tokenizer: (tokens [n, T] long, special [n, T] bool)."""
    from saeforge.text import pack, read_texts, special_token_mask

    rows = list(islice(pack(read_texts(source), tokenizer, context_size), n_contexts))
    if not rows:
        raise ValueError(f"data source {source!r} gave no context of {context_size} tokens; give more text")
    tokens = torch.stack(rows).long()
    return tokens, special_token_mask(tokens, tokenizer).bool()
