"""`evaluate`: every metric of one SAE, from an iterable of activation batches and, optionally, the model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from saeforge.eval.compat import COMPAT_MODES, SAELensAccumulator, saelens_downstream
from saeforge.eval.dictionary import absorption_proxy, decoder_neighbours, duplication_metrics
from saeforge.eval.downstream import (
    ablations,
    downstream_scores,
    hook_activations,
    model_forward,
    sae_replacement,
)
from saeforge.eval.stream import StreamAccumulator
from saeforge.eval.verdict import verdict
from saeforge.sae.base import SAE

Contexts = tuple[Tensor, Tensor]  # (tokens [n, T] long, special [n, T] bool)


def _special_mask(tokens: Tensor, model: Any) -> Tensor:
    from saeforge.text import special_token_mask

    return special_token_mask(tokens, model.tokenizer).bool()


def _as_contexts(contexts: Tensor | Contexts, model: Any) -> Contexts:
    if isinstance(contexts, Tensor):
        return contexts.long(), _special_mask(contexts, model)
    tokens, special = contexts
    if tokens.shape != special.shape:
        raise ValueError(
            f"contexts: tokens {tuple(tokens.shape)} and special mask {tuple(special.shape)} differ"
        )
    return tokens.long(), special.bool()


def _digest(t: Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def extra_label(source: str) -> str:
    """A short key-safe label for an extra corpus: `data/wiki.jsonl` -> `wiki`."""
    stem = re.sub(r"\.(txt|jsonl|parquet)$", "", source.rstrip("/").split("/")[-1].split(":")[-1])
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem) or "extra"


def _stream(sae: SAE, batches: Iterable[Tensor], neighbours: Tensor | None) -> StreamAccumulator:
    acc = StreamAccumulator(sae, neighbours)
    for x in batches:
        acc.update(x)
    return acc


@torch.no_grad()
def evaluate(
    sae: SAE,
    batches: Iterable[Tensor],
    *,
    model: Any = None,
    hook: str | None = None,
    contexts: Tensor | Contexts | None = None,
    extra: Mapping[str, Tensor | Contexts] | None = None,
    downstream_batch_size: int = 8,
    chunk: int = 1024,
    baseline_cache: dict | None = None,
    compat: str = "saeforge",
) -> dict[str, Any]:
    """Evaluates `sae` on activations and, when `model` is given, on the model's outputs.

    batches: iterable of x [B, d_in] (held-out activations at the SAE's hook), streamed once.
    model: a `saeforge.models.LoadedModel`; needs `contexts`, token contexts [n, T] (or (tokens, special mask)),
        into which the reconstruction is spliced at `hook` (default: the SAE's `metadata.hook_name`).
    extra: out-of-sample corpora {label: contexts}; their activations are taken from the model at `hook`, and
        their metrics are added under `extra.<label>.<key>`.
    chunk: rows per block of decoder cosines ([chunk, d_sae] in memory at once).
    baseline_cache: a dict shared across calls that evaluate several SAEs on the same model and data: the
        zero- and mean-ablation forward passes, which do not depend on the SAE, then run once.
    compat: "saelens" adds `saelens.*` keys, SAELens's and SAEBench's definitions (eval/compat.py).

    Returns flat metrics (documented in docs/evaluation.md) with `verdict` and `verdict_evidence`, plus
    `latent_density`, a [d_sae] float64 numpy array (not a scalar; `write_metrics` stores it apart).
    """
    if model is None and (contexts is not None or extra):
        raise ValueError(
            "`contexts` and `extra` need `model`: the reconstruction is spliced into its forward pass"
        )
    if model is not None and contexts is None and not extra:
        raise ValueError("`model` needs `contexts`, token contexts [n, T] to splice the reconstruction into")
    hook = hook or sae.cfg.metadata.get("hook_name")
    if model is not None and not hook:
        raise ValueError("pass `hook`: the SAE's cfg.json has no metadata.hook_name to splice at")
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat={compat!r} is not one of {', '.join(COMPAT_MODES)}")
    saelens = SAELensAccumulator(sae) if compat == "saelens" else None
    max_cos, neighbours = decoder_neighbours(sae.W_dec, chunk=chunk)
    acc = _stream(sae, batches if saelens is None else saelens.tap(batches), neighbours)
    metrics: dict[str, Any] = {
        "architecture": sae.cfg.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hook": hook,
    }
    metrics.update(acc.result())
    metrics.update(duplication_metrics(max_cos))
    fires, cofires = acc.absorption_counts()
    metrics["absorption_proxy"] = absorption_proxy(
        max_cos.cpu().numpy(), neighbours.cpu().numpy(), fires, cofires
    )

    if model is not None:
        forward = model_forward(model, hook)
        mean = acc.mean_activation()
        replacements = {"sae": sae_replacement(sae), **ablations(mean)}

        def scores(tokens: Tensor, special: Tensor) -> dict[str, Any]:
            cache = None
            if baseline_cache is not None:
                key = (id(model), hook, downstream_batch_size, _digest(tokens), _digest(mean))
                cache = baseline_cache.setdefault(key, {})
            return downstream_scores(
                forward, model.kind, tokens, special, replacements, downstream_batch_size, cache=cache
            )

        if contexts is not None:
            tokens, special = _as_contexts(contexts, model)
            metrics.update(scores(tokens, special))
            if saelens is not None:
                every = downstream_scores(
                    forward,
                    model.kind,
                    tokens,
                    torch.zeros_like(special),
                    replacements,
                    downstream_batch_size,
                )
                metrics.update(saelens_downstream(every))
        for label, ctx in (extra or {}).items():
            tokens, special = _as_contexts(ctx, model)
            sub = _stream(sae, hook_activations(model, hook, tokens, special, downstream_batch_size), None)
            extra_metrics = {**sub.result(), **scores(tokens, special)}
            metrics.update({f"extra.{label}.{k}": v for k, v in extra_metrics.items()})

    if saelens is not None:
        metrics.update(saelens.result())
    metrics["verdict"], metrics["verdict_evidence"] = verdict(metrics)
    metrics["latent_density"] = acc.density()
    return metrics
