"""`EvalConfig` and `run_eval`: evaluate SAE directories on an activation store (what `saeforge eval` runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeforge.eval.config import EvalConfig
from saeforge.eval.dictionary import stability
from saeforge.eval.downstream import contexts_from_source
from saeforge.eval.evaluate import evaluate, extra_label
from saeforge.sae.base import SAE


def limited_batches(batches: Iterator[Tensor], tokens: int | None) -> Iterator[Tensor]:
    """Yields batches [B, d_in] until `tokens` rows have been yielded (the last one cut); all if None."""
    seen = 0
    for x in batches:
        if tokens is not None:
            x = x[: tokens - seen]
        if x.shape[0]:
            yield x
        seen += x.shape[0]
        if tokens is not None and seen >= tokens:
            return


def sae_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the directory name, with its parent's name prepended where two collide."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    full = [f"{p.resolve().parent.name}_{p.resolve().name}" for p in paths]
    return full if len(set(full)) == len(full) else [f"{i}_{n}" for i, n in enumerate(names)]


def _config_key(sae: SAE) -> tuple:
    c = sae.cfg
    return (c.architecture, c.d_in, c.d_sae, c.k, c.metadata.get("hook_name"))


def add_stability(results: list[dict[str, Any]], saes: Sequence[SAE], hungarian_max_latents: int) -> None:
    """Adds stability keys to each result whose SAE shares its config (architecture, sizes, k, hook) with others.

    Each SAE is compared with every other of its group; the values are means over those partners.
    """
    for i, sae in enumerate(saes):
        partners = [j for j, other in enumerate(saes) if j != i and _config_key(other) == _config_key(sae)]
        if not partners:
            continue
        scores = [
            stability(sae.W_dec, saes[j].W_dec, hungarian_max_latents=hungarian_max_latents) for j in partners
        ]
        results[i]["stability_partners"] = len(partners)
        for key in scores[0]:
            values = [s[key] for s in scores if s[key] is not None]
            results[i][key] = sum(values) / len(values) if values else None


def _store_contexts(cfg: EvalConfig, store: Any, tokenizer: Any, context_size: int) -> Any:
    """The first `cfg.contexts` token contexts the store keeps, else contexts packed from its corpus source."""
    from saeforge.text import special_token_mask

    rows, have = [], 0
    for i in range(store.num_shards):
        ctx = store.shard(i).get("contexts")
        if ctx is None or have >= cfg.contexts:
            break
        rows.append(ctx[: cfg.contexts - have].long())
        have += rows[-1].shape[0]
    if have:
        tokens = torch.cat(rows)
        return tokens, special_token_mask(tokens, tokenizer).bool()
    sources = [c.source for c in store.manifest.corpus]
    if sources:
        return contexts_from_source(sources[0], tokenizer, context_size, cfg.contexts)
    raise ValueError(
        f"the activation store {cfg.activations} keeps no token contexts and its manifest names no corpus: "
        "give --data SOURCE for the downstream metrics"
    )


def run_eval(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Evaluates every SAE of `cfg` and returns one flat metrics dict each (with `name`, `sae_path`).

    Checks every SAE against the store (d_in, hook) before any long work. Writes nothing: see
    `saeforge.eval.write_eval_outputs`. `progress` receives one line per stage.
    """
    from saeforge.activations.store import ActivationStore
    from saeforge.sae import load_sae

    say = progress or (lambda _msg: None)
    store = ActivationStore.open(cfg.activations, verify="lazy" if cfg.verify else "off")
    store.check_shards()
    saes = [load_sae(p, device=cfg.device).eval() for p in cfg.saes]
    for path, sae in zip(cfg.saes, saes, strict=True):
        if sae.d_in != store.d_in:
            raise ValueError(
                f"SAE {path} has d_in {sae.d_in} but the activation store {cfg.activations} holds activations of "
                f"d_in {store.d_in}: evaluate it on activations captured at the hook it was trained on"
            )
        sae_hook = sae.cfg.metadata.get("hook_name")
        if sae_hook and store.hook and sae_hook != store.hook:
            raise ValueError(
                f"SAE {path} was trained at hook {sae_hook!r} but the activation store {cfg.activations} holds hook "
                f"{store.hook!r}: give a store captured at {sae_hook!r}"
            )

    loaded, contexts, extra = None, None, {}
    if cfg.model is not None:
        from saeforge.models import load_model

        say(f"loading model {cfg.model}")
        loaded = load_model(str(cfg.model), device=cfg.device)
        context_size = cfg.context_size or store.manifest.context_size or 128
        if cfg.data:
            contexts = contexts_from_source(cfg.data, loaded.tokenizer, context_size, cfg.contexts)
        else:
            contexts = _store_contexts(cfg, store, loaded.tokenizer, context_size)
        for source in cfg.extra_data:
            label = extra_label(source)
            if label in extra:
                raise ValueError(f"two extra corpora share the label {label!r}: rename one of the files")
            extra[label] = contexts_from_source(source, loaded.tokenizer, context_size, cfg.contexts)

    total = min(cfg.tokens or store.num_rows, store.num_rows)

    def counted(name: str) -> Iterator[Tensor]:
        done = 0
        for x in limited_batches(store.iter_batches(cfg.batch_size), cfg.tokens):
            yield x
            done += x.shape[0]
            say(f"{name}: {done:,}/{total:,} activations")
        if loaded is not None:
            say(f"{name}: splicing the reconstruction into the model")

    results, baseline_cache = [], {}
    for name, path, sae in zip(sae_names(cfg.saes), cfg.saes, saes, strict=True):
        say(f"evaluating {name}")
        metrics = evaluate(
            sae,
            counted(name),
            model=loaded,
            hook=sae.cfg.metadata.get("hook_name") or store.hook,
            contexts=contexts,
            extra=extra,
            downstream_batch_size=cfg.downstream_batch_size,
            baseline_cache=baseline_cache,
        )
        results.append({"name": name, "sae_path": str(path), "activations_verified": cfg.verify, **metrics})
    add_stability(results, saes, cfg.hungarian_max_latents)
    return results
