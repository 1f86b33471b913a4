"""Capture: one truncated forward pass per batch of contexts -> one resumable, checksummed store per hook.

Resumption is exact because everything a shard holds is a function of the token stream alone: contexts come on
a fixed grid of forward batches (saeforge.activations.corpus), each hook's progress is the grid position of its
last committed row, and a resumed run recomputes the batch it stopped in and skips what was committed. Shards
are written to a temporary name, fsynced and renamed; the manifest (or, under torchrun, each rank's progress
file) is rewritten atomically after every shard.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saeforge.activations.config import CaptureConfig, CorpusSource
from saeforge.activations.corpus import ContextStream
from saeforge.activations.hook_writer import (
    ROW_OVERHEAD_BYTES,
    CaptureError,
    CorpusExhausted,
    HookWriter,
    NonFiniteActivations,
    build_manifest,
    check_same_settings,
    load_progress,
)
from saeforge.activations.manifest import (
    MANIFEST,
    Manifest,
    ModelCard,
    PairCard,
    RankProgress,
)
from saeforge.activations.paired import check_embeddings
from saeforge.device import resolve_device
from saeforge.distributed import DistContext
from saeforge.dtypes import torch_dtype
from saeforge.lock import one_writer
from saeforge.text.packing import packing_tokens

if TYPE_CHECKING:
    from saeforge.models.loading import LoadedModel


def bytes_per_row(d_in: int, dtype: str) -> int:
    """Disk bytes one captured row takes (activations + token id + position + context share)."""
    return d_in * torch.tensor([], dtype=torch_dtype(dtype)).element_size() + ROW_OVERHEAD_BYTES


def store_status(cfg: CaptureConfig) -> dict[str, str]:
    """For each store of `cfg.store_dirs()`: "complete", "partial" (resumable) or "new"; raises CaptureError
    when its directory holds a store captured with different settings."""
    out = {}
    for hook, d in cfg.store_dirs().items():
        m = d / MANIFEST
        if m.is_file():
            manifest = Manifest.read(m)
            check_same_settings(manifest.capture, cfg, d)
            out[hook] = "complete" if manifest.complete else "partial"
        elif any(d.glob("progress-rank*.json")):
            out[hook] = "partial"
        else:
            out[hook] = "new"
    return out


def check_disk(cfg: CaptureConfig, d_ins: dict[str, int], rows_left: int) -> None:
    """Raises CaptureError when the disk under cfg.out lacks room for `rows_left` more rows of every hook."""
    need = sum(rows_left * bytes_per_row(d, cfg.dtype) for d in d_ins.values())
    free = shutil.disk_usage(cfg.out).free
    if need > free:
        gib = 1 << 30
        raise CaptureError(
            f"not enough disk space in {cfg.out}: the capture needs about {need / gib:.2f} GiB more but only "
            f"{free / gib:.2f} GiB are free ({(need - free) / gib:.2f} GiB missing). Free space, lower --tokens, "
            "use --dtype bfloat16, or choose another --out."
        )


ProgressFn = Callable[[int, int], None]


@dataclass
class _Model:
    """One model of the capture and the writers of its stores ({store name: writer})."""

    role: str | None
    loaded: LoadedModel
    card: ModelCard
    writers: dict[str, HookWriter]


def _open_model(cfg: CaptureConfig, role: str | None, path: str, rank: int, world: int) -> _Model:
    from saeforge.models import load_model, resolve_hook

    loaded = load_model(path, dtype=cfg.model_dtype, device=cfg.device, device_map=cfg.device_map)
    for h in cfg.hooks:
        resolve_hook(loaded.model, h)
    dirs = cfg.store_dirs()
    writers = {}
    for hook in cfg.hooks:
        name = hook if role is None else f"{role}/{hook}"
        writers[name] = HookWriter(
            cfg, hook, rank, world, load_progress(cfg, dirs[name], rank, world), dirs[name]
        )
    fingerprint = loaded.fingerprint
    for w in writers.values():
        saved = w.dir / MANIFEST
        if saved.is_file() and (old := Manifest.read(saved)).model and old.model.fingerprint != fingerprint:
            raise CaptureError(
                f"{w.dir} was captured from a model with other weights (fingerprint {old.model.fingerprint[:12]} vs "
                f"{fingerprint[:12]}); choose another --out"
            )
    card = ModelCard(path=str(loaded.path), fingerprint=fingerprint, family=loaded.family, kind=loaded.kind)
    return _Model(role, loaded, card, writers)


def _card_writers(models: list[_Model], tokenizer) -> None:
    """Gives every writer its manifest's model card, tokenizer name and (paired capture) pair card."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    pair = None
    if len(models) == 2:
        pair = PairCard(role="base", base=models[0].card, finetuned=models[1].card)
    for m in models:
        for w in m.writers.values():
            w.card = (m.card, name)
            w.pair = pair.model_copy(update={"role": m.role}) if pair else None


def capture(cfg: CaptureConfig, progress: ProgressFn | None = None) -> dict[str, Path]:
    """Captures cfg.tokens rows at every hook of cfg.hooks; returns {store name: directory} (cfg.store_dirs()).

    A paired capture (cfg.finetuned_model) runs both models over the same contexts, tokenized by the fine-tuned
    model's tokenizer (saeforge.activations.paired), and writes out/base/<hook> and out/finetuned/<hook>.
    Resumes a partial capture in cfg.out (same settings), returns at once for a complete one. Under
    torch.distributed (torchrun), each process runs the forward passes of its share of the batch grid and
    writes its own shards; rank 0 writes the manifest. `progress(tokens_done, tokens_total)` is called after
    every forward batch of this process. Raises CorpusExhausted (store kept, marked incomplete) if the corpus
    is shorter than cfg.tokens, NonFiniteActivations on NaN/inf, CaptureError on missing disk space,
    TokenizerMismatch when the paired models' tokenizers read the corpus differently, and FolderInUse at
    once when another process is writing into cfg.out.
    """
    ctx = DistContext.from_env(resolve_device(cfg.device))
    try:
        with one_writer(cfg.out, "capture"):
            return _capture(cfg, ctx, progress)
    finally:
        ctx.close()


def _capture(cfg: CaptureConfig, ctx: DistContext, progress: ProgressFn | None) -> dict[str, Path]:
    from saeforge.models import run_hooks

    rank, world = ctx.rank, ctx.world_size
    out = Path(cfg.out)
    dirs = cfg.store_dirs()
    status = store_status(cfg)
    if all(s == "complete" for s in status.values()):
        return dirs
    if any(s == "complete" for s in status.values()):
        done = [h for h, s in status.items() if s == "complete"]
        raise CaptureError(
            f"stores {done} are already complete in {out}; capture the other hooks into another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    models = [_open_model(cfg, role, path, rank, world) for role, path in cfg.models()]
    # The fine-tuned (last) model's tokenizer makes the one token stream every model reads.
    tokenizer = models[-1].loaded.tokenizer
    _card_writers(models, tokenizer)
    writers = {name: w for m in models for name, w in m.writers.items()}
    stream = ContextStream(
        [(s.source, s.weight) for s in cfg.data],
        tokenizer,
        cfg.context_size,
        cfg.tokens,
        cfg.batch_size,
        prepend_bos=cfg.prepend_bos,
        exclude_special=cfg.exclude_special,
        seed=cfg.seed,
        base_tokenizer=models[0].loaded.tokenizer if len(models) > 1 else None,
    )
    if len(models) > 1:
        framing = packing_tokens(tokenizer, cfg.prepend_bos)
        check_embeddings(
            [t for t in (framing.start, framing.separator) if t is not None], models[0].loaded, "base"
        )
    start = min(w.state.next_batch for w in writers.values())
    checked = False
    device = models[0].loaded.device
    for batch in stream:
        if batch.index % world != rank or batch.index < start:
            continue
        ids = batch.tokens.to(device)
        with torch.no_grad():
            acts = [run_hooks(m.loaded, ids, torch.ones_like(ids), cfg.hooks) for m in models]
        if not checked:
            rows_left = (cfg.tokens - sum(w.state.count for w in writers.values()) // len(writers)) // world
            widths = {
                n: a[w.hook].shape[-1]
                for m, a in zip(models, acts, strict=True)
                for n, w in m.writers.items()
            }
            check_disk(cfg, widths, rows_left)
            checked = True
        for m, model_acts in zip(models, acts, strict=True):
            for w in m.writers.values():
                w.add(batch, model_acts[w.hook].detach().cpu())
                w.flush()
                w.prune_contexts()
        if progress is not None:
            progress(stream.seen, cfg.tokens)
    for m in models:
        for w in m.writers.values():
            w.flush(final=True)
            if w.d_in is None:
                w.d_in = m.loaded.d_model
    return _finish(cfg, writers, stream, ctx, dirs)


def _finish(cfg, writers, stream, ctx: DistContext, dirs) -> dict[str, Path]:
    rank, world = ctx.rank, ctx.world_size
    exhausted = stream.exhausted
    for w in writers.values():
        if world == 1:
            states = [w.state]
        else:
            w.save_progress()
            gathered = ctx.gather_objects((w.state.model_dump(), w.d_in))
            states = [RankProgress.model_validate(g[0]) for g in gathered]
            w.d_in = next((g[1] for g in gathered if g[1] is not None), w.d_in)
        if rank == 0:
            manifest = build_manifest(
                cfg,
                w.hook,
                w.d_in,
                states,
                complete=not exhausted,
                stream=stream,
                model_card=w.card[0],
                tokenizer=w.card[1],
                exhausted=exhausted,
                pair=w.pair,
            )
            manifest.write(w.dir / MANIFEST)
            if not exhausted:
                for f in w.dir.glob("progress-rank*.json"):
                    f.unlink()
    ctx.barrier()
    if exhausted:
        rows = {h: sum(s.rows for s in w.state.shards) for h, w in writers.items()}
        raise CorpusExhausted(
            f"the corpus ran out ({stream.exhausted_source} ended) after {stream.seen} of the {cfg.tokens} "
            f"tokens asked for. The rows captured so far are kept in {Path(cfg.out)} (rows of this process: {rows}) "
            "as an incomplete store; give more text or a smaller --tokens in a new --out."
        )
    return dirs


__all__ = [
    "CaptureConfig",
    "CaptureError",
    "CorpusExhausted",
    "CorpusSource",
    "NonFiniteActivations",
    "bytes_per_row",
    "capture",
    "check_disk",
    "store_status",
]
