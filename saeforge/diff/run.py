"""`saeforge diff` as a Python call: DiffConfig in, DiffResult out (the CLI writes it with write_diff_outputs).

Steps: check the two stores are aligned (before any work), train a BatchTopK crosscoder on them or load the given
one, one pass for the per-latent table, top contexts of the top fine-tune-only and base-only latents with both
models side by side, judge explanations when a judge is given, and the causal check when both models are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeforge.diff.analysis import category_counts, diff_latents, top_latents
from saeforge.diff.coder import PairCoder, check_pair_coder
from saeforge.diff.config import DiffConfig
from saeforge.diff.data import PairedBatches, open_pair, paired_rows

Progress = Callable[[str], None]


@dataclass
class DiffResult:
    """What a diff found, as plain values (latents: one dict per latent, analysis.LATENT_FIELDS)."""

    latents: list[dict]
    n_rows: int
    counts: dict[str, int]
    shown: dict[str, list[int]]
    contexts: dict[int, list[dict]] = field(default_factory=dict)
    explanations: dict[int, str | None] = field(default_factory=dict)
    causal: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _tokenizer_decode(*dirs: Path | None):
    from saeforge.interpret.contexts import tokenizer_decode

    for d in dirs:
        if d is not None and Path(d).is_dir():
            from transformers import AutoTokenizer

            return tokenizer_decode(AutoTokenizer.from_pretrained(str(d), local_files_only=True))
    return None


def _store_model_dir(store) -> Path | None:
    card = store.manifest.model
    return Path(card.path) if card is not None and Path(card.path).is_dir() else None


def _explain(cfg: DiffConfig, records) -> dict[int, str | None]:
    from saeforge.interpret.judge import JudgeClient, judge_latents

    client = JudgeClient(cfg.judge_url, cfg.judge_model, api_key=cfg.judge_api_key)
    judge_latents(client, records, n_examples=cfg.contexts, n_detect=0)
    return {r.latent: (None if r.unclear else r.explanation) for r in records}


def _causal(cfg: DiffConfig, coder: PairCoder, rows: list[dict], hook: str, store):
    from saeforge.diff.causal import causal_check
    from saeforge.eval.downstream import contexts_from_source
    from saeforge.models import load_model

    base = load_model(cfg.base_model, device=cfg.device)
    ft = load_model(cfg.finetuned_model, device=cfg.device)
    data = cfg.data or (store.manifest.corpus[0].source if store.manifest.corpus else None)
    if data is None:
        raise ValueError("the causal check needs --data: the store records no corpus")
    size = cfg.context_size or store.manifest.context_size or 128
    tokens, special = contexts_from_source(data, ft.tokenizer, size, cfg.causal_contexts)
    ft_only = [r["latent"] for r in rows if r["category"] == "finetuned_only"]
    pool = [r["latent"] for r in rows if r["category"] not in ("finetuned_only", "dead")]
    out = causal_check(
        base, ft, hook, coder, tokens, special, ft_only, pool, n_controls=cfg.controls, seed=cfg.seed
    )
    return {**out, "data": data, "contexts": int(tokens.shape[0]), "context_size": size}


def run_diff(cfg: DiffConfig, coder: PairCoder | None = None, progress: Progress | None = None) -> DiffResult:
    """Runs the diff of `cfg`. coder: an already trained crosscoder (else cfg.crosscoder, else one is trained)."""
    from saeforge.device import resolve_device

    say = progress or (lambda _msg: None)
    base, ft = open_pair(cfg.base_activations, cfg.finetuned_activations)
    cfg = cfg.model_copy(update={"device": str(resolve_device(cfg.device))})
    if coder is None:
        from saeforge.diff.training import load_or_train

        coder = load_or_train(cfg, base, ft, say)
    check_pair_coder(coder, base.d_in)
    say("per-latent statistics")
    rows, n_rows = diff_latents(coder, paired_rows(base, ft), cfg.thresholds, max_rows=cfg.rows)
    shown = {c: top_latents(rows, c, cfg.top) for c in ("finetuned_only", "base_only")}
    result = DiffResult(rows, n_rows, category_counts(rows), shown)
    ids = shown["finetuned_only"] + shown["base_only"]
    if ids:
        say("top contexts")
        from saeforge.diff.contexts import side_by_side

        decode = _tokenizer_decode(cfg.finetuned_model, _store_model_dir(ft), _store_model_dir(base))
        records, ctx = side_by_side(
            coder, PairedBatches(base, ft), ids, cfg.contexts, tokens_of=base.context, decode=decode
        )
        result.contexts = dict(zip(ids, ctx, strict=True))
        if cfg.judge_url:
            say("judge explanations")
            result.explanations = _explain(cfg, records)
    if cfg.base_model is not None and not result.counts["finetuned_only"]:
        result.causal = {"skipped": "no latent is finetuned_only: nothing to remove"}
    elif cfg.base_model is not None:
        say("causal check")
        result.causal = _causal(cfg, coder, rows, base.hook, base)
    result.meta = {
        "base_activations": str(base.path),
        "finetuned_activations": str(ft.path),
        "hook": base.hook,
        "crosscoder": str(cfg.crosscoder) if cfg.crosscoder else None,
        "thresholds": cfg.thresholds.model_dump(),
        "d_in": base.d_in,
        "d_sae": int(coder.W_dec.shape[0]),
    }
    return result
