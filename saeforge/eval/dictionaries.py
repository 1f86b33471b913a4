"""`saeforge eval` for dictionaries across sites: which stores each kind needs, and its metrics from them.

    SAE         --activations X                              fvu, l0, ... (saeforge.eval.evaluate)
    transcoder  --activations X --target-activations Y       target_fvu (= fvu), l0; with --model, CE/KL with
                                                             the transcoder replacing the MLP's output
    crosscoder  --activations X_1 ... --activations X_n      fvu.<site> per site, fvu over all sites, l0

The stores of one evaluation must have been captured together: `check_aligned` compares their token ids and
(sequence, position) row by row, and every store is then read once, in store order, batch b of each holding the
same rows. The metrics themselves are those of `saeforge.eval.sites`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from saeforge.eval.config import EvalConfig
from saeforge.eval.sites import site_metrics, target_metrics, transcoder_downstream
from saeforge.eval.stream import limited_batches
from saeforge.eval.verdict import verdict
from saeforge.hook_names import canonical_hook_name
from saeforge.sae.base import SAE
from saeforge.sae.crosscoder import CrossCoder
from saeforge.sae.transcoder import Transcoder

_MLP = re.compile(r"layers\.(\d+)\.mlp_(in|out)")


def sae_kind(sae: SAE) -> str:
    """ "transcoder", "crosscoder" or "sae" (a dictionary that reconstructs its own input)."""
    return (
        "transcoder"
        if isinstance(sae, Transcoder)
        else "crosscoder"
        if isinstance(sae, CrossCoder)
        else "sae"
    )


def _mlp_layer(tc: SAE, path: Path) -> int:
    """The layer N of a transcoder from layers.N.mlp_in to layers.N.mlp_out (what the splice replaces)."""
    hooks = [canonical_hook_name(tc.cfg.metadata.get(k) or "") for k in ("hook_name", "hook_name_out")]
    found = [_MLP.fullmatch(h) for h in hooks]
    if not all(found) or found[0][2] != "in" or found[1][2] != "out" or found[0][1] != found[1][1]:
        raise ValueError(
            f"transcoder {path} reads {hooks[0] or '?'} and writes {hooks[1] or '?'}: the spliced CE/KL replaces "
            "an MLP's output, so it needs a transcoder from layers.N.mlp_in to layers.N.mlp_out; drop --model "
            "to measure its target FVU only"
        )
    return int(found[0][1])


def check_kind(cfg: EvalConfig, saes: Sequence[SAE]) -> str:
    """The one kind of `saes`, after checking that the given stores fit it (before any store is read)."""
    kinds = {p: sae_kind(s) for p, s in zip(cfg.saes, saes, strict=True)}
    kind = next(iter(kinds.values()))
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{p} ({k})" for p, k in kinds.items())
        raise ValueError(f"evaluate SAEs, transcoders and crosscoders in separate runs: {listed}")
    first, n = cfg.saes[0], len(cfg.activations)
    if kind != "transcoder" and cfg.target_activations is not None:
        raise ValueError(
            f"--target-activations is the site a transcoder writes, but {first} is a {kind} (it reconstructs "
            "its own input): drop --target-activations"
        )
    if kind == "transcoder" and cfg.target_activations is None:
        out = saes[0].cfg.metadata.get("hook_name_out") or "its target site"
        raise ValueError(
            f"{first} is a transcoder: give --target-activations STORE, the store of {out} captured together "
            "with --activations"
        )
    if kind != "crosscoder" and n > 1:
        raise ValueError(
            f"{n} --activations stores given, but {first} is a {kind}: give one store (several are the sites of "
            "a crosscoder)"
        )
    for path, sae in zip(cfg.saes, saes, strict=True):
        if kind == "crosscoder" and sae.cfg.n_sites != n:
            raise ValueError(
                f"crosscoder {path} reads {sae.cfg.n_sites} sites ({', '.join(sae.cfg.sites)}): give one "
                f"--activations store per site, in that order ({n} given)"
            )
        if kind == "transcoder" and cfg.model is not None:
            _mlp_layer(sae, path)
    if kind != "sae":
        given = [
            flag
            for flag, on in (
                ("--compare-activations", cfg.compare_activations is not None),
                ("--extra-data", bool(cfg.extra_data)),
                ("--compat saelens", cfg.compat != "saeforge"),
                ("--model", kind == "crosscoder" and cfg.model is not None),
            )
            if on
        ]
        if given:
            raise ValueError(f"{', '.join(given)} measure SAEs only, not a {kind}: drop {', '.join(given)}")
    return kind


def _check_widths(kind: str, paths: Sequence[Path], saes: Sequence[SAE], stores: Sequence[Any]) -> None:
    for path, sae in zip(paths, saes, strict=True):
        if kind == "transcoder":
            want = [
                (sae.d_in, sae.cfg.metadata.get("hook_name")),
                (sae.cfg.d_out, sae.cfg.metadata.get("hook_name_out")),
            ]
        else:
            want = [(sae.d_in, site) for site in sae.cfg.sites]
        named = len({h for _, h in want}) == len(want) and all(s.hook in {h for _, h in want} for s in stores)
        for (width, hook), store in zip(want, stores, strict=True):
            if store.d_in != width:
                raise ValueError(
                    f"{kind} {path} expects width {width} at {hook or 'this site'} but the store {store.path} "
                    f"holds d_in {store.d_in}: give the stores in the order {[h for _, h in want]}"
                )
            if named and hook and store.hook and canonical_hook_name(hook) != canonical_hook_name(store.hook):
                raise ValueError(
                    f"{kind} {path} expects {hook!r} where the store {store.path} holds {store.hook!r}: give "
                    f"the stores in the order {[h for _, h in want]}"
                )


def open_aligned(cfg: EvalConfig, kind: str, saes: Sequence[SAE]) -> list[Any]:
    """The stores of a transcoder (input, target) or crosscoder (one per site), checked aligned and sized."""
    from saeforge.activations.aligned import check_aligned
    from saeforge.activations.store import ActivationStore

    paths = [*cfg.activations, *([cfg.target_activations] if cfg.target_activations else [])]
    stores = [ActivationStore.open(p, verify="lazy" if cfg.verify else "off") for p in paths]
    for store in stores:
        store.check_shards()
    check_aligned(stores)
    _check_widths(kind, cfg.saes, saes, stores)
    return stores


def aligned_batches(cfg: EvalConfig, stores: Sequence[Any]) -> Iterator[tuple[Tensor, ...]]:
    """Tuples of aligned [B, d_i] batches, one per store: every row (or the first `cfg.tokens`) once."""
    return zip(*(limited_batches(s.iter_batches(cfg.batch_size), cfg.tokens) for s in stores), strict=True)


def evaluate_dictionary(
    cfg: EvalConfig, kind: str, sae: SAE, path: Path, stores: Sequence[Any], downstream: tuple
) -> dict[str, Any]:
    """Metrics of one transcoder or crosscoder on its aligned stores (with `verdict`); `downstream` is
    (loaded model, contexts, _) or Nones (runner._downstream)."""
    hooks = [s.hook for s in stores]
    metrics: dict[str, Any] = {"architecture": sae.cfg.architecture, "kind": kind, "d_in": sae.d_in}
    metrics["d_sae"] = sae.d_sae
    if kind == "crosscoder":
        metrics.update(
            hooks=",".join(h or "?" for h in hooks), **site_metrics(sae, aligned_batches(cfg, stores))
        )
    else:
        total: dict[str, Tensor] = {}

        def counted() -> Iterator[tuple[Tensor, Tensor]]:
            for x, y in aligned_batches(cfg, stores):
                col = y.double().sum(0)
                total["sum"] = col if "sum" not in total else total["sum"] + col
                yield x, y

        metrics.update(hook=hooks[0], target_hook=hooks[1], **target_metrics(sae, counted()))
        metrics["target_fvu"] = metrics["fvu"]
        loaded, contexts, _ = downstream
        if loaded is not None and metrics["tokens"]:
            mean = (total["sum"] / metrics["tokens"]).float()
            metrics.update(
                transcoder_downstream(
                    sae, loaded, *contexts, _mlp_layer(sae, path), mean, cfg.downstream_batch_size
                )
            )
    metrics["verdict"], metrics["verdict_evidence"] = verdict(metrics)
    return metrics
