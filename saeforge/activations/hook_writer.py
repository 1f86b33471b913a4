"""One hook's store while it is being captured: its pending rows, committed progress and manifest.

The writer keeps what `saeforge.activations.capture` needs to resume exactly: each shard is written under a
temporary name, fsynced and renamed, and this process's progress (the grid position of its last committed row)
is rewritten atomically after every shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saeforge.activations.config import CaptureConfig
from saeforge.activations.corpus import ContextBatch, ContextStream
from saeforge.activations.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    ModelCard,
    PairCard,
    RankProgress,
    ShardEntry,
    TokenCounts,
)
from saeforge.activations.shards import write_shard
from saeforge.activations.stats import RunningStats
from saeforge.activations.writer import shard_name
from saeforge.atomic import write_bytes
from saeforge.dtypes import torch_dtype

# Bytes a row costs besides its activations: token id (8) + (sequence, position) (16) + its context's share.
ROW_OVERHEAD_BYTES = 8 + 16 + 8


class CaptureError(RuntimeError):
    """Capture cannot start or continue; the message says why and what to do. Committed shards are kept."""


class CorpusExhausted(CaptureError):
    """The corpus ended before --tokens were captured; what was captured is kept as an incomplete store."""


class NonFiniteActivations(CaptureError):
    """A captured activation is NaN or inf; the message names the hook, shard, row, sequence and position."""


def progress_file(store_dir: Path, rank: int) -> Path:
    return store_dir / f"progress-rank{rank}.json"


def check_same_settings(saved: dict | None, cfg: CaptureConfig, d: Path) -> None:
    if saved is None:
        raise CaptureError(f"{d} holds a store that saeforge capture did not write; choose another --out")
    now = cfg.resume_key()
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} there vs {now.get(k)!r} now" for k in diff)
        raise CaptureError(
            f"{d} holds a capture made with other settings ({detail}); rerun with the same settings to "
            "resume it, or choose another --out"
        )


class HookWriter:
    """Pending rows and committed progress of one hook's store in this process."""

    def __init__(self, cfg: CaptureConfig, hook: str, rank: int, world: int, state: RankProgress, dir: Path):
        self.cfg = cfg
        self.hook = hook
        self.dir = dir
        self.rank, self.world = rank, world
        self.state = state
        self.d_in: int | None = len(state.sum) if state.sum is not None else None
        self.stats: RunningStats | None = None
        self.pending: dict[str, list[torch.Tensor]] = {k: [] for k in ("acts", "tok", "pos", "key")}
        self.dropped_keys: list[torch.Tensor] = []
        self.contexts: dict[int, torch.Tensor] = {}
        self.grid = cfg.batch_size * cfg.context_size + 1
        self.card: tuple[ModelCard, str] | None = None
        self.pair: PairCard | None = None

    def _stats(self, d_in: int) -> RunningStats:
        if self.stats is None:
            self.stats = RunningStats(d_in)
            if self.state.sum is not None:
                self.stats.sum = torch.tensor(self.state.sum, dtype=torch.float64)
                self.stats.sum_sq_norm = self.state.sum_sq_norm
                self.stats.sum_norm = self.state.sum_norm
                self.stats.count = self.state.count
        return self.stats

    @property
    def rows_pending(self) -> int:
        return sum(t.shape[0] for t in self.pending["acts"])

    def add(self, batch: ContextBatch, acts: torch.Tensor) -> None:
        """Adds the candidate rows of `batch` (acts [n, context_size, d_in]) not yet committed."""
        if batch.index < self.state.next_batch:
            return
        if self.d_in is None:
            self.d_in = acts.shape[-1]
        elif acts.shape[-1] != self.d_in:
            raise CaptureError(
                f"hook {self.hook}: activations have width {acts.shape[-1]}, the store {self.d_in}"
            )
        n, t = batch.candidate.shape
        cand = batch.candidate.reshape(-1).nonzero()[:, 0]
        flat = acts.reshape(n * t, -1)
        keep = torch.ones(len(cand), dtype=torch.bool)
        factor = self.cfg.outlier_factor
        if factor is not None:
            norms = acts.float().norm(dim=-1)
            med = torch.stack(
                [
                    norms[i][batch.nonspecial[i]].median() if batch.nonspecial[i].any() else norms[i].median()
                    for i in range(n)
                ]
            )
            over = norms > factor * med[:, None]
            keep = ~over.reshape(-1)[cand]
        ordinal = torch.arange(len(cand))
        if batch.index == self.state.next_batch:
            fresh = ordinal >= self.state.next_candidate
            cand, keep, ordinal = cand[fresh], keep[fresh], ordinal[fresh]
        key = batch.index * self.grid + ordinal
        self.dropped_keys.append(key[~keep])
        cand, key = cand[keep], key[keep]
        if len(cand) == 0:
            return
        seq = batch.seq_ids[cand // t]
        self.pending["acts"].append(flat[cand].to(torch_dtype(self.cfg.dtype)))
        self.pending["tok"].append(batch.tokens.reshape(-1)[cand])
        self.pending["pos"].append(torch.stack([seq, cand % t], dim=1))
        self.pending["key"].append(key)
        for i, s in enumerate(batch.seq_ids.tolist()):
            self.contexts[s] = batch.tokens[i]

    def flush(self, final: bool = False) -> None:
        """Commits full shards of `shard_tokens` rows (and, if final, the remainder)."""
        while self.rows_pending >= self.cfg.shard_tokens or (final and self.rows_pending > 0):
            cat = {k: torch.cat(v) for k, v in self.pending.items()}
            take = min(self.cfg.shard_tokens, cat["acts"].shape[0])
            self._commit({k: v[:take] for k, v in cat.items()})
            self.pending = {k: [v[take:]] for k, v in cat.items()}

    def _commit(self, rows: dict[str, torch.Tensor]) -> None:
        acts = rows["acts"]
        name = shard_name(len(self.state.shards), self.rank)
        finite = torch.isfinite(acts).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            seq, pos = rows["pos"][bad].tolist()
            raise NonFiniteActivations(
                f"hook {self.hook}: NaN or inf in {self.dir / name} at row {bad} (sequence {seq}, position {pos}; "
                f"{int((~finite).sum())} bad rows in this shard, stored as {self.cfg.dtype}). The shard was not "
                "written; earlier shards are intact. Check the model in float32, or use --dtype float32 if "
                "float16 overflowed."
            )
        seqs = torch.unique(rows["pos"][:, 0])
        tensors = {
            "activations": acts,
            "token_ids": rows["tok"],
            "positions": rows["pos"],
            "contexts": torch.stack([self.contexts[s] for s in seqs.tolist()]),
            "context_ids": seqs,
        }
        try:
            sha, _ = write_shard(self.dir / name, tensors)
        except OSError as e:
            raise CaptureError(
                f"writing {self.dir / name} failed ({e}). Shards before it are intact: free space and rerun the "
                "same command to resume."
            ) from e
        last = int(rows["key"][-1])
        dropped = torch.cat(self.dropped_keys) if self.dropped_keys else torch.empty(0, dtype=torch.int64)
        stats = self._stats(acts.shape[1])
        stats.add(acts)
        st = self.state
        st.shards.append(ShardEntry(path=name, rows=acts.shape[0], sha256=sha))
        st.next_batch, st.next_candidate = divmod(last + 1, self.grid)
        st.outliers_dropped += int((dropped <= last).sum())
        self.dropped_keys = [dropped[dropped > last]]
        st.sum, st.sum_sq_norm, st.sum_norm, st.count = (
            stats.sum.tolist(),
            stats.sum_sq_norm,
            stats.sum_norm,
            stats.count,
        )
        self.save_progress()

    def prune_contexts(self) -> None:
        """Forgets the contexts of sequences that no pending row belongs to."""
        if not self.pending["pos"]:
            self.contexts = {}
            return
        live = set(torch.unique(torch.cat([p[:, 0] for p in self.pending["pos"]])).tolist())
        self.contexts = {s: c for s, c in self.contexts.items() if s in live}

    def save_progress(self) -> None:
        if self.world == 1:
            model_card, tokenizer = self.card
            manifest = build_manifest(
                self.cfg,
                self.hook,
                self.d_in,
                [self.state],
                False,
                model_card=model_card,
                tokenizer=tokenizer,
                pair=self.pair,
            )
            manifest.write(self.dir / MANIFEST)
        else:
            write_bytes(progress_file(self.dir, self.rank), self.state.model_dump_json().encode())


def build_manifest(
    cfg: CaptureConfig,
    hook: str,
    d_in: int | None,
    states: list[RankProgress],
    complete: bool,
    stream: ContextStream | None = None,
    model_card: ModelCard | None = None,
    tokenizer: str | None = None,
    exhausted: bool = False,
    pair: PairCard | None = None,
) -> Manifest:
    shards = [s for st in states for s in st.shards]
    stats = RunningStats(d_in or 1)
    for st in states:
        if st.sum is not None:
            stats.sum += torch.tensor(st.sum, dtype=torch.float64)
            stats.sum_sq_norm += st.sum_sq_norm
            stats.sum_norm += st.sum_norm
            stats.count += st.count
    rows = sum(s.rows for s in shards)
    counts = TokenCounts(
        requested=cfg.tokens,
        seen=stream.seen if stream else 0,
        special_excluded=stream.special_excluded if stream else 0,
        outliers_dropped=sum(st.outliers_dropped for st in states),
        rows=rows,
    )
    single = states[0] if len(states) == 1 and not complete else None
    return Manifest(
        d_in=d_in or 1,
        dtype=cfg.dtype,
        hook=hook,
        shards=shards,
        format_version=FORMAT_VERSION,
        complete=complete,
        exhausted=exhausted,
        stats=stats.result() if complete or exhausted else None,
        model=model_card,
        tokenizer=tokenizer,
        pair=pair,
        context_size=cfg.context_size,
        prepend_bos=cfg.prepend_bos,
        exclude_special=cfg.exclude_special,
        corpus=stream.cards if stream else [],
        preprocessing=(
            "documents tokenised without special tokens, each followed by EOS (SEP for encoders), packed into "
            f"contexts of {cfg.context_size} tokens"
            + (" starting with BOS (CLS for encoders)" if cfg.prepend_bos else "")
            + ("; special-token positions excluded" if cfg.exclude_special else "")
            + (
                f"; rows with norm > {cfg.outlier_factor:g} x their context's median norm dropped"
                if cfg.outlier_factor
                else ""
            )
        ),
        outlier_threshold=cfg.outlier_factor,
        tokens=counts if (complete or exhausted) else None,
        contexts="shard",
        capture=cfg.resume_key(),
        progress=single,
    )


def load_progress(cfg: CaptureConfig, d: Path, rank: int, world: int) -> RankProgress:
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(f".shard-{rank:03d}-*.tmp"):
        stale.unlink()
    if world == 1:
        if any(d.glob("progress-rank*.json")):
            raise CaptureError(f"{d} was started under torchrun; resume it with the same torchrun command")
        m = d / MANIFEST
        if m.is_file():
            manifest = Manifest.read(m)
            check_same_settings(manifest.capture, cfg, d)
            return manifest.progress or RankProgress()
        return RankProgress()
    if (d / MANIFEST).is_file():
        check_same_settings(Manifest.read(d / MANIFEST).capture, cfg, d)
    f = progress_file(d, rank)
    if f.is_file():
        state = RankProgress.model_validate(json.loads(f.read_text()))
        if state.world_size != world:
            raise CaptureError(
                f"{d} was started with {state.world_size} processes; resume with --nproc_per_node {state.world_size}"
            )
        return state
    if (d / MANIFEST).is_file() and not Manifest.read(d / MANIFEST).complete:
        raise CaptureError(f"{d} was started by a single process; resume it without torchrun")
    return RankProgress(rank=rank, world_size=world)
