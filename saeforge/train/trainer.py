"""The training loop: one batch per step, every SAE of the sweep trains on it.

    for step in range(start, total_steps):
        x = next(batches) * activation_scale                    # [B / world_size, d_in]
        for each SAE: out = training_forward(x); out.loss.backward()
        stop here if x or any loss is NaN/inf (nothing is updated, no checkpoint is written)
        for each SAE: average gradients over ranks; before_optimizer_step(); clip; Adam step at lr_at(step);
                      after_optimizer_step(); update dead-latent counters (in tokens)
        on_step(StepEvent) when given (every rank)
        log every `log_every` steps; checkpoint every `checkpoint_every` steps, after the last step (unless
        final_checkpoint is false) and on SIGTERM/SIGINT

`train` returns one `TrainedSAE` per SAE: the exported inference SAE, its folder and its metric history.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeforge.atomic import write_text
from saeforge.device import resolve_device
from saeforge.distributed import DistContext
from saeforge.errors import ConfigError
from saeforge.lock import one_writer
from saeforge.sae.base import TrainStepInput
from saeforge.train import metrics, state
from saeforge.train.checkpoint import (
    latest_checkpoint,
)
from saeforge.train.config import TrainConfig
from saeforge.train.data import (
    activation_scales,
    check_batch,
    data_fingerprint,
    describe_batch,
    open_loader,
    open_stores,
    source_widths,
)
from saeforge.train.dead import DeadClock
from saeforge.train.defaults import OptimSettings
from saeforge.train.events import ProgressEvent, StepEvent
from saeforge.train.layout import DataLayout, Parts, as_parts, site_names
from saeforge.train.loggers import MetricLoggers, check_logger_packages, read_metrics
from saeforge.train.optim import ScheduleFreeSignum, make_optimizer
from saeforge.train.results import TrainedSAE, artefacts, export_results, non_finite
from saeforge.train.runcard import data_card
from saeforge.train.schedule import lr_at, sparsity_warmup_at
from saeforge.train.sharded import read_checkpoint, run_tensors, write_checkpoint
from saeforge.train.signals import StopSignal
from saeforge.train.specs import ResolvedSAE, budget_warnings, resolve_specs
from saeforge.train.state import check_resumable, loader_state
from saeforge.train.tensor_parallel import Mesh, check_shardable

log = logging.getLogger("saeforge.train")

CHECKPOINTS = "checkpoints"
RESOLVED_CONFIG = "config.resolved.json"


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT: a checkpoint was saved at a step boundary; rerun with resume to continue."""

    def __init__(self, message: str, step: int, checkpoint: Path, signum: int):
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


@dataclass
class _Member:
    """One SAE of the sweep and its training state."""

    resolved: ResolvedSAE
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    clock: DeadClock  # which latents are dead (train/dead.py)
    acc: dict[str, Tensor] = field(default_factory=dict)  # float64 metric sums since the last record
    extras: dict[str, Tensor] = field(default_factory=dict)  # the last step's extras (lambda, threshold)

    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def optim(self) -> OptimSettings:
        return self.resolved.optim


class _Run:
    def __init__(
        self,
        cfg: TrainConfig,
        source: Iterable[Tensor] | None,
        progress: Callable | None,
        ctx: DistContext,
        on_step: Callable[[StepEvent], None] | None = None,
    ):
        self.cfg, self.progress, self.ctx, self.on_step = cfg, progress, ctx, on_step
        self.device = resolve_device(cfg.device, ctx.local_rank)
        self.dtype = getattr(torch, cfg.dtype)
        self.stores = open_stores(cfg, source)
        self.store = self.stores[0] if self.stores else None
        rows = min(s.num_rows for s in self.stores) if self.stores else getattr(source, "num_rows", None)
        self.cfg = cfg = cfg.with_tokens(rows)  # tokens unset: epochs (default 1) passes over the store
        self.source = source
        widths, where, self.batches = source_widths(self.stores, self.source, cfg)
        self.layout = DataLayout.of(cfg, widths, where)
        self.d_in = self.layout.d_in
        sites = site_names(self.stores) or list(getattr(source, "sites", None) or [])
        sites = sites or [f"site{i}" for i in range(len(widths))]
        self.resolved = resolve_specs(cfg, self.d_in, where, self.layout.sae_fields(sites))
        for message in budget_warnings(self.resolved, cfg.tokens) if ctx.is_main else ():
            log.warning(message)
        check_shardable(self.resolved, cfg.tensor_parallel)
        self.mesh = Mesh(ctx, cfg.tensor_parallel)
        if cfg.batch_size % self.mesh.dp:
            raise ConfigError(
                f"batch_size: {cfg.batch_size} is not divisible by the {self.mesh.dp} data-parallel ranks"
            )
        self.ckpt_root = cfg.out / CHECKPOINTS
        self.checkpoint = latest_checkpoint(self.ckpt_root)
        if self.checkpoint is not None and not cfg.resume:
            raise ConfigError(
                f"out: {cfg.out} already holds a run (checkpoint {self.checkpoint.name}); "
                "pass resume (--resume) to continue it, or choose a new out directory"
            )
        if self.source is None:
            self.source = open_loader(cfg, self.stores, self.mesh.dp_rank, self.mesh.dp)
        if self.batches is None:
            self.batches = iter(self.source)
        self.data = data_card(
            self.store.manifest if self.store is not None else getattr(source, "manifest", None)
        )
        self.total_steps = cfg.total_steps
        self.local_batch = cfg.batch_size // self.mesh.dp
        self.history: list[dict[str, Any]] = []
        self.logged_through = 0  # the last step the trackers received before an interruption (resume)
        self.elapsed_before = 0.0

    def _build(self) -> None:
        self.members: list[_Member] = []
        for r in self.resolved:
            torch.manual_seed(r.spec.seed)
            model = self.mesh.build(r.sae_cfg).to(device=self.device, dtype=self.dtype)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = make_optimizer(r.optim.optimizer, params, r.optim.lr, r.optim.betas, r.optim.eps)
            clock = DeadClock(r.d_sae // self.mesh.tp, r.dead_tokens, r.live_rate, self.cfg.batch_size,
                              self.device)  # fmt: skip
            self.members.append(_Member(r, model, opt, params, clock))
        self._reset_acc()

    def _reset_acc(self) -> None:
        self.input_acc = metrics.input_sums(self.layout.d_y, self.device)
        for m in self.members:
            m.acc = metrics.sae_sums(self.device)

    def _next_batch(self, step: int) -> Parts:
        try:
            parts = tuple(x.reshape(-1, x.shape[-1]) for x in as_parts(next(self.batches)))
        except StopIteration:
            raise RuntimeError(
                f"the batch source ended at step {step} of {self.total_steps}; it must yield batches until "
                "the run ends (activation loaders repeat epochs)"
            ) from None
        parts = tuple(x.to(device=self.device, dtype=self.dtype, non_blocking=True) for x in parts)
        widths, world, batch = self.layout.widths, self.mesh.dp, self.cfg.batch_size
        self.raw_bad = check_batch(parts, step, self.local_batch, widths, batch, world, self.d_in)
        return parts

    def _scaled(self, parts: Parts) -> tuple[Tensor, Tensor | None]:
        """(x, target) of scaled parts (see train/layout.py)."""
        return self.layout.combine(tuple(x * s for x, s in zip(parts, self.scale, strict=True)))

    def _fresh_start(self) -> tuple[Tensor, Tensor | None]:
        """Initialises from the first batch (gathered over ranks); returns that batch's (x, target), scaled."""
        parts = self._next_batch(0)
        samples = tuple(self.mesh.gather_rows(x) for x in parts)
        self.scale = activation_scales(samples, self.source, self.cfg.normalize_activations)
        x_sample, target_sample = self.layout.combine(
            tuple(x * s for x, s in zip(samples, self.scale, strict=True))
        )
        for m in self.members:
            if target_sample is None:
                m.model.init_from_data(x_sample)
            else:
                m.model.init_from_data(x_sample, target_sample)
            self.mesh.broadcast_module(m.model)
        torch.manual_seed(self.cfg.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(self.cfg.seed)
        return self._scaled(parts)

    @property
    def saved_scale(self) -> float | list[float]:
        """The activation scale as checkpoints and run cards record it: one number, or one per store."""
        return self.scale[0] if len(self.scale) == 1 else list(self.scale)

    def _restore(self) -> int:
        meta, t = read_checkpoint(self.checkpoint, self.members, self.mesh)
        check_resumable(meta, self.cfg, self.stores, self.checkpoint)
        for m in self.members:
            m.acc = state.decode_member(t, m.name, m.model, m.optimizer, m.clock, self.device)
        self.input_acc = state.decode_input(t, self.input_acc, self.device)
        saved = meta["activation_scale"]
        self.scale = tuple(saved) if isinstance(saved, list) else (saved,)
        self.elapsed_before = meta["elapsed_s"]
        step = meta["step"]
        loader = loader_state(meta, self.ctx.rank, self.ctx.world_size, self.checkpoint)
        if loader is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(loader)
            self.batches = iter(self.source)
        else:
            # A source without state is fast-forwarded by the batches of the steps already taken.
            for _ in range(step):
                next(self.batches)
        state.restore_rng(t, self.ctx.rank, self.device)
        if self.ctx.is_main:
            self.logged_through = max((r["step"] for r in read_metrics(self.cfg.out)), default=step)
            self.history = MetricLoggers.truncate(self.cfg.out, step)
        log.info("resumed from %s at step %d", self.checkpoint, step)
        return step

    def _save(self, steps_done: int) -> Path:
        """Saves checkpoint `steps_done` (rank 0 writes, or each tensor rank its shard); returns its path."""
        tensors, dims = run_tensors(self.members, self.input_acc, self.mesh)
        ranks = self.ctx.gather_objects(state.rank_state(self.source, self.device))
        meta = None
        if self.ctx.is_main:
            tensors.update(state.encode_rng(ranks))
            meta = {
                "format_version": 1,
                "step": steps_done,
                "tokens": steps_done * self.cfg.batch_size,
                "world_size": self.ctx.world_size,
                "tensor_parallel": self.mesh.tp,
                "activation_scale": self.saved_scale,
                "data_fingerprint": data_fingerprint(self.stores),
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0,
                "loaders": [st["loader"] for st in ranks],
                "config": self.cfg.model_dump(mode="json"),
                "resolved": {r.name: r.to_json() for r in self.resolved},
            }
        return write_checkpoint(
            self.ckpt_root, steps_done, tensors, dims, meta, self.cfg.keep_checkpoints, self.mesh
        )

    # -- the loop ---------------------------------------------------------------------------------------

    def _forward_backward(
        self, step: int, x: Tensor, target: Tensor | None = None
    ) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Forward and backward of every SAE on x [B, d_in] (reconstructing target [B, d_out], default x); stops on
        NaN/inf before any update.

        Returns each SAE's step metrics and the float64 column sums of the target [d_out]."""
        autocast = _autocast(self.device, self.cfg.autocast)
        # The float64 column sums feed the input statistics; every part was checked unscaled by check_batch
        # (NaN/inf, float32 overflow of a row's squared norm), and a finite scale keeps finite values finite.
        y = x if target is None else target
        y_sum = y.sum(0, dtype=torch.float64)
        results, flags = [], [self.raw_bad | ~torch.isfinite(y_sum).all()]
        for m in self.members:
            inp = TrainStepInput(
                x=x,
                target=target,
                step=step,
                dead_mask=m.clock.mask(step),
                sparsity_warmup=sparsity_warmup_at(step, m.optim.sparsity_warmup_steps),
                collectives=self.mesh.collectives,
            )
            with autocast:
                out = m.model.training_forward(inp)
            out.loss.backward()
            m.extras = out.extras
            flags.append(~torch.isfinite(out.loss.detach()))
            results.append(metrics.step_metrics(out, y))
        bad = self.ctx.all_reduce_(torch.stack(flags).to(torch.float32))
        if bool(bad.any()):
            described = describe_batch(self.source, self.store) if bool(flags[0]) else None
            shards = [s for s in self.ctx.gather_objects(described) if s]
            where = "; ".join(shards) or describe_batch(self.source, self.store)
            bad_saes = [m.name for m, b in zip(self.members, bad[1:], strict=True) if b > 0]
            raise non_finite(step, bool(bad[0] > 0), bad_saes, where, latest_checkpoint(self.ckpt_root))
        return results, y_sum

    def _update(self, step: int, results: list[dict[str, Tensor]], x: Tensor, x_sum: Tensor) -> None:
        rows = x.shape[0] * self.mesh.dp
        metrics.add_input(self.input_acc, x, x_sum)
        for m, r in zip(self.members, results, strict=True):
            fired = r.pop("fired")
            fired = self.mesh.dp_sum_(fired)
            m.clock.update(step, fired, rows)
            metrics.add_step(m.acc, r)
            self.mesh.average_gradients(m.params)
            m.model.before_optimizer_step()
            if m.optim.grad_clip_norm > 0:
                self.mesh.clip_grad_norm_(m.model, m.params, m.optim.grad_clip_norm)
            lr = lr_at(step, self.total_steps, m.optim)
            for group in m.optimizer.param_groups:
                group["lr"] = lr
            m.optimizer.step()
            m.model.after_optimizer_step()
            m.optimizer.zero_grad(set_to_none=True)

    def _record(self, steps_done: int, tokens_per_s: float) -> dict[str, Any]:
        """Reduces the metric sums over ranks into one record and resets them."""
        reduced = metrics.reduce_sums(self.input_acc, [m.acc for m in self.members], self.mesh.dp_sum_)
        saes = {}
        for m, values in zip(self.members, reduced, strict=True):
            values["dead_fraction"] = self.mesh.dead_fraction(m.clock.mask(steps_done))
            values["lr"] = lr_at(steps_done - 1, self.total_steps, m.optim)
            saes[m.name] = {**values, **metrics.scalar_extras(m.extras)}
        self._reset_acc()
        return {
            "step": steps_done,
            "tokens": steps_done * self.cfg.batch_size,
            "tokens_per_s": tokens_per_s,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0,
            "saes": saes,
        }

    def run(self) -> list[TrainedSAE]:
        cfg = self.cfg
        self._build()
        self.t0 = time.perf_counter()
        pending: tuple[Tensor, Tensor | None] | None = None
        if self.checkpoint is not None:
            start = self._restore()
        else:
            start, pending = 0, self._fresh_start()
        loggers = _open_outputs(self) if self.ctx.is_main else None
        status = "FAILED"
        try:
            with StopSignal() as stop:
                self._loop(start, pending, stop, loggers)
            for m in self.members:  # schedule-free: the average x is the trained SAE (checkpoints keep y, z)
                if isinstance(m.optimizer, ScheduleFreeSignum):
                    m.optimizer.use_average()
                    m.model.after_optimizer_step()
            results = export_results(self)
            if loggers is not None:
                loggers.attach(artefacts(cfg.out, results))
            status = "FINISHED"
            return results
        except TrainingInterrupted:
            status = "KILLED"
            raise
        finally:
            if loggers is not None:
                loggers.close(status)

    def _loop(
        self,
        start: int,
        pending: tuple[Tensor, Tensor | None] | None,
        stop: StopSignal,
        loggers: MetricLoggers | None,
    ) -> None:
        cfg, t_loop = self.cfg, time.perf_counter()
        for step in range(start, self.total_steps):
            x, target = pending if pending is not None else self._scaled(self._next_batch(step))
            pending = None
            results, y_sum = self._forward_backward(step, x, target)
            self._update(step, results, x if target is None else target, y_sum)
            done = step + 1
            if self.on_step is not None:
                self.on_step(StepEvent(done, x, {m.name: m.model for m in self.members}))
            tokens_per_s = (done - start) * cfg.batch_size / max(time.perf_counter() - t_loop, 1e-9)
            record = None
            if done % cfg.log_every == 0 or done == self.total_steps:
                record = self._record(done, tokens_per_s)
                self.history.append(record)
                if loggers is not None:
                    loggers.log(record)
            saved = self._save(done) if _checkpoint_due(cfg, done, self.total_steps) else None
            if self.progress is not None and self.ctx.is_main:
                self.progress(_progress(cfg, done, self.total_steps, start, tokens_per_s, record))
            if self.ctx.any(stop.signum is not None, self.device) and done < self.total_steps:
                path = saved or self._save(done)
                signum = stop.signum or signal.SIGTERM
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(signum).name} after step {done} of {self.total_steps}; "
                    f"checkpoint saved at {path}; rerun with --resume to continue",
                    step=done,
                    checkpoint=path,
                    signum=signum,
                )


def _open_outputs(run: _Run) -> MetricLoggers:
    """Main rank: the run folder, its resolved config and the metric sinks (continuing the trackers' runs on
    resume)."""
    cfg = run.cfg
    cfg.out.mkdir(parents=True, exist_ok=True)
    if run.checkpoint is None:  # records of an earlier attempt that died before its first checkpoint
        MetricLoggers.truncate(cfg.out, 0)
    resolved = {
        "config": cfg.model_dump(mode="json"),
        "resolved": {r.name: r.to_json() for r in run.resolved},
    }
    write_text(cfg.out / RESOLVED_CONFIG, json.dumps(resolved, indent=1))
    return MetricLoggers(
        cfg.out,
        cfg.loggers,
        cfg.model_dump(mode="json"),
        cfg.wandb_project,
        resume_after=run.logged_through if run.checkpoint is not None else None,
    )


def _progress(
    cfg: TrainConfig, done: int, total: int, start: int, tokens_per_s: float, record: dict | None
) -> ProgressEvent:
    return ProgressEvent(
        step=done,
        total_steps=total,
        start_step=start,
        tokens=done * cfg.batch_size,
        total_tokens=total * cfg.batch_size,
        tokens_per_s=tokens_per_s,
        metrics=record["saes"] if record else None,
    )


def _checkpoint_due(cfg: TrainConfig, done: int, total_steps: int) -> bool:
    """Whether a checkpoint is saved after step `done`: every `checkpoint_every` steps, and after the last one
    unless `final_checkpoint` is false."""
    if done == total_steps:
        return cfg.final_checkpoint
    return bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0


def _autocast(device: torch.device, mode: str):
    return (
        torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bfloat16" else contextlib.nullcontext()
    )


def train(
    cfg: TrainConfig,
    source: Iterable[Tensor] | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
) -> list[TrainedSAE]:
    """Trains every SAE of `cfg` on the same batches and returns them, exported, with their metric history.

    source: an iterable of float32 [batch_size / world_size, d_in] batches, optionally with `state_dict()` /
        `load_state_dict()` (exact resume), `activation_scale`, `d_in`, `manifest` and `last_source()`;
        by default the shuffling loader of the store at `cfg.activations`. For a crosscoder (`cfg.crosscoder`)
        or a transcoder, batches are tuples of aligned [batch_size / world_size, d_i] tensors: one per site, or
        (input, target); the source may have `scales`, `d_ins` and `sites` (see train/layout.py). A batch may
        have any leading shape ([..., d_in], e.g. [sequences, positions, d_in]): it is flattened to rows.
    progress: called on the main rank after every step with a `ProgressEvent`.
    on_step: called on every rank after each optimiser step, before logging, with a `StepEvent`.

    Raises ConfigError before any work on a bad configuration, NonFiniteError on NaN/inf, and
    TrainingInterrupted after saving a checkpoint on SIGTERM/SIGINT, FolderInUse at once when another process
    is writing into cfg.out.
    """
    if cfg.distribute_hooks:
        raise ConfigError("a distribute_hooks run trains one run per hook: call saeforge.train.train_hooks")
    check_logger_packages(cfg.loggers)
    ctx = DistContext.from_env(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    try:
        with one_writer(cfg.out, "train"):
            return _Run(cfg, source, progress, ctx, on_step).run()
    finally:
        ctx.close()
