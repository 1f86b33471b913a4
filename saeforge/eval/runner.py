"""`EvalConfig` and `run_eval`: evaluate SAE directories on an activation store (what `saeforge eval` runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeforge.errors import ConfigError
from saeforge.eval.config import EvalConfig
from saeforge.eval.dictionaries import check_kind, evaluate_dictionary, open_aligned
from saeforge.eval.dictionary import stability
from saeforge.eval.downstream import contexts_from_source
from saeforge.eval.drift import latent_drift, metric_changes
from saeforge.eval.evaluate import evaluate, extra_label
from saeforge.eval.stream import limited_batches
from saeforge.hook_names import canonical_hook_name
from saeforge.sae.base import SAE


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
        f"the activation store {store.path} keeps no token contexts and its manifest names no corpus: "
        "give --data SOURCE for the downstream metrics"
    )


def _open_store(path: Path, sae_paths: Sequence[Path], saes: Sequence[SAE], verify: bool) -> Any:
    """Opens the store at `path` and checks every SAE against it (d_in, hook)."""
    from saeforge.activations.store import ActivationStore

    store = ActivationStore.open(path, verify="lazy" if verify else "off")
    store.check_shards()
    for sae_path, sae in zip(sae_paths, saes, strict=True):
        if sae.d_in != store.d_in:
            raise ConfigError(
                f"SAE {sae_path} has d_in {sae.d_in} but the activation store {path} holds activations of "
                f"d_in {store.d_in}: evaluate it on activations captured at the hook it was trained on"
            )
        sae_hook = sae.cfg.metadata.get("hook_name")
        if sae_hook and store.hook and canonical_hook_name(sae_hook) != canonical_hook_name(store.hook):
            raise ConfigError(
                f"SAE {sae_path} was trained at hook {sae_hook!r} but the activation store {path} holds hook "
                f"{store.hook!r}: give a store captured at {sae_hook!r}"
            )
    return store


def _downstream(cfg: EvalConfig, store: Any, model: Path | None, extra_data: Sequence[str], say) -> tuple:
    """(loaded model, contexts, {label: contexts}) for a store's downstream metrics; Nones without a model."""
    if model is None:
        return None, None, {}
    from saeforge.models import load_model

    say(f"loading model {model}")
    loaded = load_model(str(model), device=cfg.device, device_map=cfg.device_map)
    context_size = cfg.context_size or store.manifest.context_size or 128
    if cfg.data:
        contexts = contexts_from_source(cfg.data, loaded.tokenizer, context_size, cfg.contexts)
    else:
        contexts = _store_contexts(cfg, store, loaded.tokenizer, context_size)
    extra = {}
    for source in extra_data:
        label = extra_label(source)
        if label in extra:
            raise ValueError(f"two extra corpora share the label {label!r}: rename one of the files")
        extra[label] = contexts_from_source(source, loaded.tokenizer, context_size, cfg.contexts)
    return loaded, contexts, extra


class _Side:
    """One store an SAE is evaluated on, with its model and contexts (base, or the compare store)."""

    def __init__(self, cfg: EvalConfig, label: str, store: Any, downstream: tuple, say):
        self.cfg, self.label, self.store, self.say = cfg, label, store, say
        self.loaded, self.contexts, self.extra = downstream
        self.baseline_cache: dict = {}

    def _batches(self, name: str) -> Iterator[Tensor]:
        total = min(self.cfg.tokens or self.store.num_rows, self.store.num_rows)
        done = 0
        for x in limited_batches(self.store.iter_batches(self.cfg.batch_size), self.cfg.tokens):
            yield x
            done += x.shape[0]
            self.say(f"{name}{self.label}: {done:,}/{total:,} activations")
        if self.loaded is not None:
            self.say(f"{name}{self.label}: splicing the reconstruction into the model")

    def evaluate(self, name: str, sae: SAE) -> dict[str, Any]:
        return evaluate(
            sae,
            self._batches(name),
            model=self.loaded,
            hook=sae.cfg.metadata.get("hook_name") or self.store.hook,
            contexts=self.contexts,
            extra=self.extra,
            downstream_batch_size=self.cfg.downstream_batch_size,
            baseline_cache=self.baseline_cache,
            compat=self.cfg.compat,
        )


def _drift(cfg: EvalConfig, base: dict[str, Any], compare: dict[str, Any]) -> dict[str, Any]:
    """compare.* metrics, drift.* scalars and the `drift` data (saeforge.eval.drift) of one SAE."""
    fires = [np.rint(m["latent_density"] * m["tokens"]) for m in (base, compare)]
    drift = latent_drift(
        fires[0], base["tokens"], fires[1], compare["tokens"], cfg.drift_ratio, cfg.drift_min_frequency
    )
    out: dict[str, Any] = {f"compare.{k}": v for k, v in compare.items() if k != "latent_density"}
    out["base_activations"] = str(cfg.activations[0])
    out["compare_activations"] = str(cfg.compare_activations)
    out["compare_latent_density"] = compare["latent_density"]
    out.update({f"drift.{k}": v for k, v in {**drift["summary"], **metric_changes(base, compare)}.items()})
    out["drift"] = drift
    return out


def _run_dictionaries(cfg: EvalConfig, kind: str, saes: Sequence[SAE], say) -> list[dict[str, Any]]:
    """Results of transcoders or crosscoders on their aligned stores (saeforge.eval.dictionaries)."""
    stores = open_aligned(cfg, kind, saes)
    downstream = _downstream(cfg, stores[0], cfg.model, (), say)
    results = []
    for name, path, sae in zip(sae_names(cfg.saes), cfg.saes, saes, strict=True):
        say(f"evaluating {kind} {name} on {len(stores)} aligned stores")
        metrics = evaluate_dictionary(cfg, kind, sae, path, stores, downstream)
        results.append({"name": name, "sae_path": str(path), "activations_verified": cfg.verify, **metrics})
    return results


def run_eval(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Evaluates every SAE of `cfg` and returns one flat metrics dict each (with `name`, `sae_path`).

    Checks every SAE against the store(s) (kind, d_in, hook) before any long work. With `compare_activations`,
    each result also holds the compare store's metrics (`compare.<key>`), the drift scalars (`drift.<key>`)
    and the per-latent drift (`drift`, see saeforge.eval.drift). Transcoders (with `target_activations`) and
    crosscoders (one store per site) get the metrics of saeforge.eval.dictionaries. Writes nothing: see
    `saeforge.eval.write_eval_outputs`. `progress` receives one line per stage.
    """
    from saeforge.sae import load_sae

    say = progress or (lambda _msg: None)
    saes = [load_sae(p, device=cfg.device).eval() for p in cfg.saes]
    kind = check_kind(cfg, saes)
    if kind != "sae":
        results = _run_dictionaries(cfg, kind, saes, say)
        if kind == "transcoder":  # a crosscoder's decoder is [d_sae, n_sites, d_in]: no seed matching yet
            add_stability(results, saes, cfg.hungarian_max_latents)
        return results
    store = _open_store(cfg.activations[0], cfg.saes, saes, cfg.verify)
    compare_store = None
    if cfg.compare_activations is not None:
        compare_store = _open_store(cfg.compare_activations, cfg.saes, saes, cfg.verify)
    sides = [_Side(cfg, "", store, _downstream(cfg, store, cfg.model, cfg.extra_data, say), say)]
    if compare_store is not None:
        downstream = _downstream(cfg, compare_store, cfg.compare_model, (), say)
        sides.append(_Side(cfg, " (compare)", compare_store, downstream, say))

    results = []
    for name, path, sae in zip(sae_names(cfg.saes), cfg.saes, saes, strict=True):
        say(f"evaluating {name}")
        metrics = sides[0].evaluate(name, sae)
        result = {"name": name, "sae_path": str(path), "activations_verified": cfg.verify, **metrics}
        if len(sides) > 1:
            result.update(_drift(cfg, metrics, sides[1].evaluate(name, sae)))
        results.append(result)
    add_stability(results, saes, cfg.hungarian_max_latents)
    return results
