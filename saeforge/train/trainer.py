"""The training loop: one batch per step, every SAE of the sweep trains on it.

    for step in range(start, total_steps):
        x = next(batches) * activation_scale                    # [B / world_size, d_in]
        for each SAE: out = training_forward(x); out.loss.backward()
        stop here if x or any loss is NaN/inf (nothing is updated, no checkpoint is written)
        for each SAE: average gradients over ranks; before_optimizer_step(); clip; Adam step at lr_at(step);
                      after_optimizer_step(); update dead-latent counters (in tokens)
        log every `log_every` steps; checkpoint every `checkpoint_every` steps and on SIGTERM/SIGINT

`train` returns one `TrainedSAE` per SAE: the exported inference SAE, its folder and its metric history.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from saeforge import sae as sae_api
from saeforge.atomic import write_text
from saeforge.lock import one_writer
from saeforge.sae import kernels
from saeforge.sae.base import SAE, TrainStepInput
from saeforge.train.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from saeforge.train.config import (
    OPERATIONAL_FIELDS,
    ConfigError,
    SAESpec,
    TrainConfig,
    format_validation_error,
)
from saeforge.train.data import data_fingerprint, describe_batch, open_loader, open_store
from saeforge.train.defaults import OptimSettings, resolve_optim
from saeforge.train.distributed import DistContext
from saeforge.train.loggers import MetricLoggers, check_logger_packages
from saeforge.train.plots import plot_curves
from saeforge.train.runcard import SPARSITY_FIELDS, data_card, run_card
from saeforge.train.schedule import lr_at, sparsity_warmup_at
from saeforge.train.signals import StopSignal

log = logging.getLogger("saeforge.train")

CHECKPOINTS = "checkpoints"
RUN_CARD = "run_card.json"
CURVES = "curves.png"
RESOLVED_CONFIG = "config.resolved.json"


class NonFiniteError(RuntimeError):
    """NaN or inf in an input batch or a loss; the run stopped before updating any weight."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT: a checkpoint was saved at a step boundary; rerun with resume to continue."""

    def __init__(self, message: str, step: int, checkpoint: Path, signum: int):
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


@dataclass
class ProgressEvent:
    """Passed to the `progress` callback after every step (main rank only).

    start_step: the step this process started from (non-zero after a resume).
    metrics: per SAE name, the metrics of the record logged at this step (None on steps without a record).
    """

    step: int
    total_steps: int
    start_step: int
    tokens: int
    total_tokens: int
    tokens_per_s: float
    metrics: dict[str, dict[str, float]] | None = None


@dataclass
class TrainedSAE:
    """One trained SAE.

    sae: the exported inference SAE (takes raw activations). path: its folder (cfg.json + weights).
    metrics: the final record's metrics. history: every record, {"step", "tokens", "loss", <loss terms>, "l0",
    "fvu", "dead_fraction", "lr"}.
    """

    name: str
    sae: SAE
    path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_card: dict[str, Any]


@dataclass
class _Member:
    """One SAE of the sweep and its training state."""

    spec: SAESpec
    sae_cfg: Any  # the TrainingSAEConfig it was built from
    d_sae: int
    optim: OptimSettings
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    since_fired: Tensor  # [d_sae] int64, tokens since each latent last fired
    acc: dict[str, Tensor] = field(default_factory=dict)  # float64 metric sums since the last record

    @property
    def name(self) -> str:
        return self.spec.name


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but no CUDA device is available; use device: cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _training_sae_config(spec: SAESpec, i: int, d_in: int, d_sae: int) -> Any:
    fields = {f: getattr(spec, f) for f in SPARSITY_FIELDS if getattr(spec, f) is not None}
    fields.update(spec.options)
    try:
        return sae_api.TrainingSAEConfig(
            architecture=spec.architecture, d_in=d_in, d_sae=d_sae, seed=spec.seed, **fields
        )
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"SAE '{spec.name}'", prefix=f"saes[{i}]")) from None


def validate_specs(cfg: TrainConfig, d_in: int, data_source: str) -> list[tuple[Any, int, OptimSettings]]:
    """Checks every SAE against the data and the architecture registry; returns (sae config, d_sae, optim)."""
    known = sorted(sae_api.TRAINING_ARCHITECTURES)
    resolved = []
    for i, spec in enumerate(cfg.saes):
        where = f"saes[{i}] ({spec.name})"
        if spec.architecture not in sae_api.TRAINING_ARCHITECTURES:
            raise ConfigError(
                f"{where}.architecture: unknown architecture '{spec.architecture}'; known: {known}"
            )
        if spec.d_in is not None and spec.d_in != d_in:
            raise ConfigError(
                f"{where}.d_in: the SAE asks for d_in={spec.d_in} but {data_source} has d_in={d_in}; "
                "remove d_in or point activations at a store of that width"
            )
        d_sae = spec.resolved_d_sae(d_in)
        if spec.k is not None and spec.k > d_sae:
            raise ConfigError(f"{where}.k: k={spec.k} exceeds d_sae={d_sae}; lower k or raise d_sae")
        sae_cfg = _training_sae_config(spec, i, d_in, d_sae)
        optim = resolve_optim(spec, sae_cfg.architecture, d_sae, cfg.total_steps)
        resolved.append((sae_cfg, d_sae, optim))
    return resolved


class _Run:
    def __init__(
        self, cfg: TrainConfig, source: Iterable[Tensor] | None, progress: Callable | None, ctx: DistContext
    ):
        self.cfg, self.progress, self.ctx = cfg, progress, ctx
        self.device = resolve_device(cfg.device, ctx.local_rank)
        self.dtype = getattr(torch, cfg.dtype)
        if cfg.batch_size % self.ctx.world_size:
            raise ConfigError(
                f"batch_size: {cfg.batch_size} is not divisible by the {self.ctx.world_size} data-parallel ranks"
            )
        self.store = open_store(cfg, source)
        self.source, self.batches = source, None
        self.d_in, where = self._d_in()
        self.resolved = validate_specs(cfg, self.d_in, where)
        self.ckpt_root = cfg.out / CHECKPOINTS
        self.checkpoint = latest_checkpoint(self.ckpt_root)
        if self.checkpoint is not None and not cfg.resume:
            raise ConfigError(
                f"out: {cfg.out} already holds a run (checkpoint {self.checkpoint.name}); "
                "pass resume (--resume) to continue it, or choose a new out directory"
            )
        if self.source is None:
            self.source = open_loader(cfg, self.store, ctx)
        if self.batches is None:
            self.batches = iter(self.source)
        self.data = data_card(
            self.store.manifest if self.store is not None else getattr(source, "manifest", None)
        )
        self.total_steps = cfg.total_steps
        self.local_batch = cfg.batch_size // self.ctx.world_size
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0

    def _d_in(self) -> tuple[int, str]:
        """d_in of the store, else of the source (its `d_in`, or its first batch, which is kept for step 0)."""
        if self.store is not None:
            return self.store.d_in, f"the store {self.cfg.activations}"
        d_in = getattr(self.source, "d_in", None)
        if d_in is None:
            it = iter(self.source)
            first = next(it)
            self.batches = itertools.chain([first], it)
            d_in = first.shape[-1]
        return int(d_in), "the batch source"

    # -- building and restoring state -------------------------------------------------------------------

    def _build(self) -> None:
        self.members: list[_Member] = []
        for spec, (sae_cfg, d_sae, optim) in zip(self.cfg.saes, self.resolved, strict=True):
            torch.manual_seed(spec.seed)
            model = sae_api.create_training_sae(sae_cfg).to(device=self.device, dtype=self.dtype)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = kernels.Adam(params, lr=optim.lr, betas=optim.betas, eps=optim.eps)
            since = torch.zeros(d_sae, dtype=torch.long, device=self.device)
            self.members.append(_Member(spec, sae_cfg, d_sae, optim, model, opt, params, since))
        self._reset_acc()

    def _reset_acc(self) -> None:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self.input_acc = {"sum": z(self.d_in), "sum_sq": z(()), "rows": z(())}
        for m in self.members:
            m.acc = {"steps": z(()), "sse": z(()), "l0": z(()), "loss": z(())}

    def _next_batch(self, step: int) -> Tensor:
        try:
            x = next(self.batches)
        except StopIteration:
            raise RuntimeError(
                f"the batch source ended at step {step} of {self.total_steps}; it must yield batches until "
                "the run ends (activation loaders repeat epochs)"
            ) from None
        if x.shape != (self.local_batch, self.d_in):
            raise ValueError(
                f"batch of step {step} has shape {tuple(x.shape)}, expected [{self.local_batch}, {self.d_in}] "
                f"(batch_size {self.cfg.batch_size} / {self.ctx.world_size} ranks, d_in {self.d_in})"
            )
        return x.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def _fresh_start(self) -> Tensor:
        """Initialises from the first batch (gathered over ranks); returns that batch, scaled."""
        x = self._next_batch(0)
        sample = self.ctx.collectives.all_gather_cat(x) if self.ctx.enabled else x
        if self.cfg.normalize_activations == "expected_norm":
            scale = getattr(self.source, "activation_scale", None)
            if scale is None:
                scale = math.sqrt(self.d_in) / sample.norm(dim=-1).mean().item()
            self.scale = float(scale)
            if not (math.isfinite(self.scale) and self.scale > 0):
                raise ConfigError(
                    f"normalize_activations: the activation scale sqrt(d_in) / E||x|| is {self.scale} (the data's "
                    "statistics hold NaN/inf or zeros); check the store with `saeforge verify`, recapture, or set "
                    "normalize_activations: none"
                )
        else:
            self.scale = 1.0
        for m in self.members:
            m.model.init_from_data(sample * self.scale)
            self.ctx.broadcast_module(m.model)
        torch.manual_seed(self.cfg.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(self.cfg.seed)
        return x * self.scale

    def _check_resumable(self, meta: dict[str, Any]) -> None:
        saved = {k: v for k, v in meta["config"].items() if k not in OPERATIONAL_FIELDS}
        now = {k: v for k, v in self.cfg.model_dump(mode="json").items() if k not in OPERATIONAL_FIELDS}
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if changed:
            raise ConfigError(
                f"resume: the configuration differs from the checkpoint's in {changed}; resume with the same "
                f"settings (see {self.checkpoint}/state.json) or start a new run in another out directory"
            )
        saved_data, data = meta.get("data_fingerprint"), data_fingerprint(self.store)
        if saved_data and data and saved_data != data:
            raise ConfigError(
                f"activations: the store {self.cfg.activations} holds other data than the run being resumed "
                f"(its shard checksums differ from those of {meta['config']['activations']}); point activations "
                "at the run's store"
            )
        if meta["world_size"] != self.ctx.world_size:
            raise ConfigError(
                f"resume: the checkpoint was written by {meta['world_size']} data-parallel ranks, this run has "
                f"{self.ctx.world_size}; resume with --nproc_per_node {meta['world_size']}"
            )

    def _restore(self) -> int:
        ckpt = load_checkpoint(self.checkpoint)
        meta, t = ckpt.meta, ckpt.tensors
        self._check_resumable(meta)
        for m in self.members:
            prefix = f"sae/{m.name}/"
            m.model.load_state_dict({k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)})
            state_dict = m.optimizer.state_dict()
            state: dict[int, dict[str, Tensor]] = {}
            oprefix = f"optim/{m.name}/"
            for k, v in t.items():
                if k.startswith(oprefix):
                    idx, key = k[len(oprefix) :].split("/")
                    state.setdefault(int(idx), {})[key] = v
            state_dict["state"] = state
            m.optimizer.load_state_dict(state_dict)
            m.since_fired.copy_(t[f"dead/{m.name}"])
            aprefix = f"acc/{m.name}/"
            m.acc = {k[len(aprefix) :]: v.to(self.device) for k, v in t.items() if k.startswith(aprefix)}
        self.input_acc = {k: t[f"acc/input/{k}"].to(self.device) for k in self.input_acc}
        self.scale = meta["activation_scale"]
        self.elapsed_before = meta["elapsed_s"]
        step = meta["step"]
        loader_state = meta["loaders"][self.ctx.rank]
        if loader_state is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(loader_state)
            self.batches = iter(self.source)
        else:
            # A source without state is fast-forwarded by the batches of the steps already taken.
            for _ in range(step):
                next(self.batches)
        torch.set_rng_state(t[f"rng/cpu/{self.ctx.rank}"])
        if self.device.type == "cuda" and f"rng/cuda/{self.ctx.rank}" in t:
            torch.cuda.set_rng_state(t[f"rng/cuda/{self.ctx.rank}"], self.device)
        if self.ctx.is_main:
            self.history = MetricLoggers.truncate(self.cfg.out, step)
        log.info("resumed from %s at step %d", self.checkpoint, step)
        return step

    def _save(self, steps_done: int) -> Path:
        """Saves checkpoint `steps_done` (rank 0 writes, every rank contributes its state); returns its path."""
        tensors: dict[str, Tensor] = {}
        for m in self.members:
            tensors.update({f"sae/{m.name}/{k}": v for k, v in m.model.state_dict().items()})
            for idx, st in m.optimizer.state_dict()["state"].items():
                tensors.update(
                    {f"optim/{m.name}/{idx}/{k}": v for k, v in st.items() if isinstance(v, Tensor)}
                )
            tensors[f"dead/{m.name}"] = m.since_fired
            tensors.update({f"acc/{m.name}/{k}": v for k, v in m.acc.items()})
        tensors.update({f"acc/input/{k}": v for k, v in self.input_acc.items()})
        state_fn = getattr(self.source, "state_dict", None)
        local = {
            "loader": state_fn() if callable(state_fn) else None,
            "rng_cpu": torch.get_rng_state().tolist(),
            "rng_cuda": torch.cuda.get_rng_state(self.device).tolist()
            if self.device.type == "cuda"
            else None,
        }
        ranks = self.ctx.gather_objects(local)
        if self.ctx.is_main:
            for r, st in enumerate(ranks):
                tensors[f"rng/cpu/{r}"] = torch.tensor(st["rng_cpu"], dtype=torch.uint8)
                if st["rng_cuda"] is not None:
                    tensors[f"rng/cuda/{r}"] = torch.tensor(st["rng_cuda"], dtype=torch.uint8)
            meta = {
                "format_version": 1,
                "step": steps_done,
                "tokens": steps_done * self.cfg.batch_size,
                "world_size": self.ctx.world_size,
                "activation_scale": self.scale,
                "data_fingerprint": data_fingerprint(self.store),
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.t0,
                "loaders": [st["loader"] for st in ranks],
                "config": self.cfg.model_dump(mode="json"),
                "resolved": self._resolved_json(),
            }
            save_checkpoint(self.ckpt_root, steps_done, tensors, meta, self.cfg.keep_checkpoints)
        self.ctx.barrier()
        return self.ckpt_root / checkpoint_name(steps_done)

    def _resolved_json(self) -> dict[str, Any]:
        return {
            m.name: {"d_in": self.d_in, "d_sae": m.d_sae, **m.optim.model_dump(mode="json")}
            for m in self.members
        }

    # -- the loop ---------------------------------------------------------------------------------------

    def _forward_backward(self, step: int, x: Tensor) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Forward and backward of every SAE on x [B, d_in]; stops on NaN/inf before any update.

        Returns each SAE's step metrics and the float64 column sums of x [d_in]."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.cfg.autocast == "bfloat16"
            else contextlib.nullcontext()
        )
        # The float64 column sums feed the input statistics and double as an exact finiteness check: a NaN or
        # inf propagates into its column's sum, and float32 values cannot overflow a float64 sum of a batch.
        x_sum = x.sum(0, dtype=torch.float64)
        results, flags = [], [~torch.isfinite(x_sum).all()]
        for m in self.members:
            inp = TrainStepInput(
                x=x,
                step=step,
                dead_mask=m.since_fired >= self.cfg.dead_tokens,
                sparsity_warmup=sparsity_warmup_at(step, m.optim.sparsity_warmup_steps),
                collectives=self.ctx.collectives,
            )
            with autocast:
                out = m.model.training_forward(inp)
            out.loss.backward()
            flags.append(~torch.isfinite(out.loss.detach()))
            sse = (out.x_hat.detach() - x).pow(2).sum(dtype=torch.float64)
            terms = {f"loss_{k}": v.detach().to(torch.float64) for k, v in out.losses.items()}
            results.append(
                {
                    "fired": out.fired.detach(),
                    "l0": out.l0.detach(),
                    "sse": sse,
                    **terms,
                    "loss": out.loss.detach().to(torch.float64),
                }
            )
        bad = self.ctx.all_reduce_(torch.stack(flags).to(torch.float32))
        if bool(bad.any()):
            self._raise_non_finite(step, bad, local_input_bad=bool(flags[0]))
        return results, x_sum

    def _raise_non_finite(self, step: int, bad: Tensor, local_input_bad: bool) -> None:
        described = describe_batch(self.source, self.store) if local_input_bad else None
        shards = self.ctx.gather_objects(described)
        where = "; ".join(s for s in shards if s) or describe_batch(self.source, self.store)
        kept = latest_checkpoint(self.ckpt_root)
        keep = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been written"
        if bad[0] > 0:
            what = "NaN or inf in the input activations"
        else:
            names = [m.name for m, b in zip(self.members, bad[1:], strict=True) if b > 0]
            what = f"NaN or inf in the loss of SAE {names} (inputs were finite)"
        raise NonFiniteError(f"{what} at step {step}, batch from {where}; weights not updated, {keep}")

    def _update(self, step: int, results: list[dict[str, Tensor]], x: Tensor, x_sum: Tensor) -> None:
        rows = x.shape[0] * self.ctx.world_size
        self.input_acc["sum"] += x_sum
        self.input_acc["sum_sq"] += x.pow(2).sum(dtype=torch.float64)
        self.input_acc["rows"] += x.shape[0]
        for m, r in zip(self.members, results, strict=True):
            fired = self.ctx.collectives.all_reduce_sum(r["fired"]) if self.ctx.enabled else r["fired"]
            m.since_fired += rows
            m.since_fired.masked_fill_(fired > 0, 0)  # no boolean indexing: it would sync a GPU
            for k, v in r.items():
                if k != "fired":
                    m.acc[k] = m.acc.get(k, torch.zeros((), dtype=torch.float64, device=self.device)) + v
            m.acc["steps"] += 1
            self.ctx.average_gradients(m.params)
            m.model.before_optimizer_step()
            if m.optim.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(m.params, m.optim.grad_clip_norm)
            lr = lr_at(step, self.total_steps, m.optim)
            for group in m.optimizer.param_groups:
                group["lr"] = lr
            m.optimizer.step()
            m.model.after_optimizer_step()
            m.optimizer.zero_grad(set_to_none=True)

    def _record(self, steps_done: int, tokens_per_s: float) -> dict[str, Any]:
        """Reduces the metric sums over ranks into one record and resets them."""
        per_member = [sorted(m.acc) for m in self.members]
        flat = torch.cat(
            [self.input_acc["sum"], self.input_acc["sum_sq"].view(1), self.input_acc["rows"].view(1)]
            + [torch.stack([m.acc[k] for k in ks]) for m, ks in zip(self.members, per_member, strict=True)]
        )
        flat = self.ctx.all_reduce_(flat).cpu()
        d = self.d_in
        total_sq = flat[d] - flat[:d].pow(2).sum() / flat[d + 1]
        offset, saes = d + 2, {}
        for m, ks in zip(self.members, per_member, strict=True):
            vals = dict(zip(ks, flat[offset : offset + len(ks)].tolist(), strict=True))
            offset += len(ks)
            n = vals.pop("steps")
            sse = vals.pop("sse")
            metrics = {k: v / n for k, v in vals.items()}
            metrics["fvu"] = sse / max(float(total_sq), 1e-30)
            metrics["dead_fraction"] = (m.since_fired >= self.cfg.dead_tokens).double().mean().item()
            metrics["lr"] = lr_at(steps_done - 1, self.total_steps, m.optim)
            saes[m.name] = metrics
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
        pending: Tensor | None = None
        if self.checkpoint is not None:
            start = self._restore()
        else:
            start, pending = 0, self._fresh_start()
        loggers = None
        if self.ctx.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
            if self.checkpoint is None:  # records of an earlier attempt that died before its first checkpoint
                MetricLoggers.truncate(cfg.out, 0)
            resolved = {"config": cfg.model_dump(mode="json"), "resolved": self._resolved_json()}
            write_text(cfg.out / RESOLVED_CONFIG, json.dumps(resolved, indent=1))
            loggers = MetricLoggers(cfg.out, cfg.loggers, cfg.model_dump(mode="json"), cfg.wandb_project)
        try:
            with StopSignal() as stop:
                self._loop(start, pending, stop, loggers)
        finally:
            if loggers is not None:
                loggers.close()
        return self._finish()

    def _loop(
        self, start: int, pending: Tensor | None, stop: StopSignal, loggers: MetricLoggers | None
    ) -> None:
        cfg, t_loop = self.cfg, time.perf_counter()
        for step in range(start, self.total_steps):
            x = pending if pending is not None else self._next_batch(step) * self.scale
            pending = None
            results, x_sum = self._forward_backward(step, x)
            self._update(step, results, x, x_sum)
            done = step + 1
            tokens_per_s = (done - start) * cfg.batch_size / max(time.perf_counter() - t_loop, 1e-9)
            record = None
            if done % cfg.log_every == 0 or done == self.total_steps:
                record = self._record(done, tokens_per_s)
                self.history.append(record)
                if loggers is not None:
                    loggers.log(record)
            saved = None
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == self.total_steps:
                saved = self._save(done)
            if self.progress is not None and self.ctx.is_main:
                self.progress(
                    ProgressEvent(
                        step=done,
                        total_steps=self.total_steps,
                        start_step=start,
                        tokens=done * cfg.batch_size,
                        total_tokens=self.total_steps * cfg.batch_size,
                        tokens_per_s=tokens_per_s,
                        metrics=record["saes"] if record else None,
                    )
                )
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

    def _finish(self) -> list[TrainedSAE]:
        out = []
        for m in self.members:
            sae = m.model.export(activation_scale=self.scale)
            card = run_card(
                self.cfg,
                m.spec,
                sae_config=m.sae_cfg.model_dump(mode="json"),
                optim=m.optim,
                data=self.data,
                activation_scale=self.scale,
                world_size=self.ctx.world_size,
                steps=self.total_steps,
                device=str(self.device),
                num_rows=self.store.num_rows if self.store is not None else None,
            )
            hist = [{"step": r["step"], "tokens": r["tokens"], **r["saes"][m.name]} for r in self.history]
            card["final_metrics"] = (
                {k: v for k, v in hist[-1].items() if k not in ("step", "tokens")} if hist else {}
            )
            path = self.cfg.out / m.name
            if self.ctx.is_main:
                sae_api.save_sae(sae, path, metadata=card)
            out.append(TrainedSAE(m.name, sae, path, card["final_metrics"], hist, card))
        if self.ctx.is_main:
            write_text(self.cfg.out / RUN_CARD, json.dumps({t.name: t.run_card for t in out}, indent=1))
            if self.cfg.plots:
                plot_curves(self.history, self.cfg.out / CURVES)
        self.ctx.barrier()
        return out


def train(
    cfg: TrainConfig,
    source: Iterable[Tensor] | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> list[TrainedSAE]:
    """Trains every SAE of `cfg` on the same batches and returns them, exported, with their metric history.

    source: an iterable of float32 [batch_size / world_size, d_in] batches, optionally with `state_dict()` /
        `load_state_dict()` (exact resume), `activation_scale`, `d_in`, `manifest` and `last_source()`;
        by default the shuffling loader of the store at `cfg.activations`.
    progress: called on the main rank after every step with a `ProgressEvent`.

    Raises ConfigError before any work on a bad configuration, NonFiniteError on NaN/inf, and
    TrainingInterrupted after saving a checkpoint on SIGTERM/SIGINT, FolderInUse at once when another process
    is writing into cfg.out.
    """
    check_logger_packages(cfg.loggers)
    ctx = DistContext.from_env(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    try:
        with one_writer(cfg.out, "train"):
            return _Run(cfg, source, progress, ctx).run()
    finally:
        ctx.close()
