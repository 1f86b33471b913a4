"""The diff's crosscoder: the one given (`--crosscoder DIR`), or a BatchTopK crosscoder (saeforge.sae.CrossCoder)
trained on the two aligned stores with saeforge's trainer, under OUT/crosscoder (checkpoints, metrics, run card;
a rerun resumes). Site 0 is the base store, site 1 the fine-tuned one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from saeforge.activations import ActivationStore
from saeforge.sae.rates import scaled_lr

SAE_NAME = "crosscoder"


def train_crosscoder(cfg, base: ActivationStore, finetuned: ActivationStore, say: Callable[[str], None]):
    """Trains the BatchTopK crosscoder of `cfg` (a DiffConfig) under cfg.out/crosscoder/; returns it."""
    from saeforge.train import SAESpec, TrainConfig, train

    d_in, rows = base.d_in, base.num_rows
    batch = min(cfg.train_batch_size, rows)
    tokens = cfg.tokens or 2 * (rows // batch) * batch
    d_sae = cfg.d_sae or max(1, round((cfg.expansion_factor or 8) * d_in))
    out = Path(cfg.out) / "crosscoder"
    # Gao et al.'s rate, not the TopK family's ten times it: on the planted diff of tests/diff/test_run.py
    # (d_sae 64, 1,200 steps of 256) the family's rate lost one of 8 fine-tune-only features (recall 0.875).
    train_cfg = TrainConfig(
        activations=[base.path, finetuned.path], crosscoder=True, tokens=tokens, batch_size=batch, out=out,
        saes=[SAESpec(name=SAE_NAME, architecture="batchtopk", d_sae=d_sae, k=cfg.k, seed=cfg.seed, lr=scaled_lr(d_sae))],
        seed=cfg.seed, device=cfg.device, dead_tokens=max(batch, min(10_000_000, tokens // 20)),
        resume=(out / "checkpoints").is_dir(), plots=False,
    )  # fmt: skip
    say(f"training a BatchTopK crosscoder (k={cfg.k}, d_sae={d_sae}) on {tokens:,} tokens")
    (trained,) = train(train_cfg)
    return trained.sae


def load_or_train(cfg, base: ActivationStore, finetuned: ActivationStore, say: Callable[[str], None]):
    """cfg: a saeforge.diff.config.DiffConfig. Returns an inference crosscoder over (base, finetuned)."""
    from saeforge.sae import load_sae

    if cfg.crosscoder is not None:
        say(f"loading {cfg.crosscoder}")
        return load_sae(cfg.crosscoder, device=cfg.device)
    return train_crosscoder(cfg, base, finetuned, say)
