"""Estimates before spending: store disk size, SAE + Adam memory, capture and training time on this machine.

Times come from a short timed run here: a few truncated forward passes of the model to the hook, and a few
training steps of a real dense SAE of the planned size (the `standard` architecture and the trainer's Adam).
The dense step is an upper bound for TopK with a sparse decoder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from saeforge.activations.capture import bytes_per_row
from saeforge.sae import TrainStepInput, create_training_sae
from saeforge.train.config import TrainConfig
from saeforge.train.optim import Adam
from saeforge.train.specs import resolve_specs

_TRAIN_BATCH = 1024


class Plan(BaseModel):
    hook: str
    d_in: int
    d_sae: int
    tokens: int
    dtype: str
    store_bytes: int
    free_bytes: int | None
    sae_params: int
    sae_adam_bytes: int
    batch_bytes: int
    forward_tokens_per_s: float
    train_tokens_per_s: float
    capture_seconds: float
    train_seconds: float


def _timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def time_sae_step(
    d_in: int,
    d_sae: int,
    batch: int = _TRAIN_BATCH,
    repeats: int = 2,
    k: int | None = None,
    config: Any = None,
) -> float:
    """Seconds of one training step of a real SAE (encode, activation, decode, loss, backward, the trainer's
    Adam) on a [batch, d_in] batch: the dense `standard` architecture (ReLU, L1 penalty), with `k` the `topk`
    architecture and its sparse kernels, or the training SAE `config` (a TrainingSAEConfig) as given."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    sparsity = (
        {"architecture": "standard", "sparsity_coefficient": 1.0}
        if k is None
        else {"architecture": "topk", "k": k}
    )
    sae = create_training_sae(config or {"d_in": d_in, "d_sae": d_sae, **sparsity})
    params = [p for p in sae.parameters() if p.requires_grad]
    opt = Adam(params, lr=1e-4)
    x = torch.randn(batch, d_in, generator=g)

    def step():
        out = sae.training_forward(TrainStepInput(x=x, step=0))
        out.loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, repeats)


class TrainingEstimate(BaseModel):
    """How long a training run is, before it starts: its tokens, steps, passes over the data and wall time."""

    tokens: int
    steps: int
    rows: int = Field(description="rows of the store the run reads (the smallest, for aligned stores)")
    passes: float = Field(description="tokens / rows: how many times the run reads each row")
    seconds: float = Field(description="estimated wall time of the steps (a timed warm-up here)")


def estimate_training(cfg: TrainConfig, d_in: int, rows: int) -> TrainingEstimate:
    """The run `cfg` (tokens resolved) on a store of `rows` rows of width d_in: steps, passes, and the time of
    its steps measured here: a short warm-up (a few steps on random data) of every SAE of the sweep as
    configured, scaled to the run's batch size. Data loading and metrics are not timed."""
    batch = min(cfg.batch_size, _TRAIN_BATCH)
    resolved = resolve_specs(cfg, d_in, "the store")
    step_s = (
        sum(time_sae_step(d_in, r.d_sae, batch, 3, config=r.sae_cfg) for r in resolved)
        * cfg.batch_size
        / batch
    )
    return TrainingEstimate(
        tokens=cfg.tokens,
        steps=cfg.total_steps,
        rows=rows,
        passes=cfg.tokens / rows,
        seconds=cfg.total_steps * step_s,
    )


def plan(
    model: str | Path,
    hook: str,
    tokens: int,
    dtype: str = "float32",
    expansion_factor: float = 16.0,
    context_size: int = 128,
    batch_size: int = 8,
    out: str | Path | None = None,
    device: str = "cpu",
) -> Plan:
    """Plans a capture of `tokens` rows at `hook` and the training of an SAE with d_sae = expansion_factor * d_in."""
    from saeforge.models import load_model, resolve_hook, run_hooks

    loaded = load_model(model, device=device)
    resolve_hook(loaded.model, hook)
    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or len(loaded.tokenizer))
    ids = torch.randint(
        0,
        min(vocab, len(loaded.tokenizer)),
        (batch_size, context_size),
        generator=torch.Generator().manual_seed(0),
    )
    ids = ids.to(loaded.device)
    mask = torch.ones_like(ids)
    shape: list[int] = []

    def forward():
        with torch.no_grad():
            shape[:] = next(iter(run_hooks(loaded, ids, mask, [hook]).values())).shape

    forward_s = _timed(forward, 2)
    d_in = int(shape[-1])
    d_sae = int(round(expansion_factor * d_in))
    step_s = time_sae_step(d_in, d_sae)
    params = 2 * d_in * d_sae + d_sae + d_in
    forward_tps = batch_size * context_size / forward_s
    train_tps = _TRAIN_BATCH / step_s
    free = None
    if out is not None:
        probe = Path(out)
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
    return Plan(
        hook=hook,
        d_in=d_in,
        d_sae=d_sae,
        tokens=tokens,
        dtype=dtype,
        store_bytes=tokens * bytes_per_row(d_in, dtype),
        free_bytes=free,
        sae_params=params,
        sae_adam_bytes=params * 4 * 4,
        batch_bytes=4096 * (2 * d_sae + 3 * d_in) * 4,
        forward_tokens_per_s=forward_tps,
        train_tokens_per_s=train_tps,
        capture_seconds=tokens / forward_tps,
        train_seconds=tokens / train_tps,
    )
