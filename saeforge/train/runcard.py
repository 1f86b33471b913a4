"""The run card: how an SAE was made, written into its `cfg.json` metadata and into the run directory.

Data fields (model and fingerprint, hook, context size, tokenizer, corpora, preprocessing, token counts) come
from the activation store's manifest; training fields from the resolved configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeforge import sae as sae_api
from saeforge.train.config import SAESpec, TrainConfig
from saeforge.train.defaults import OptimSettings
from saeforge.version import __version__

INIT_SETTINGS = ("b_dec_init", "decoder_init_norm", "seed")
# Manifest fields that describe how activations were collected, not where the shards are.
_NOT_CARD = {"shards", "stats", "progress", "capture", "complete", "format_version", "d_in"}


def _paths(paths: list[Path] | None) -> str | list[str] | None:
    """One store as its path, several as a list."""
    if not paths:
        return None
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


def data_card(manifest: Any | None) -> dict[str, Any]:
    """The data part of the card from a store manifest (a pydantic model or dict), or {} without one."""
    if manifest is None:
        return {}
    data = manifest.model_dump(mode="json") if hasattr(manifest, "model_dump") else dict(manifest)
    return {k: v for k, v in data.items() if k not in _NOT_CARD and v is not None}


def run_card(
    cfg: TrainConfig,
    spec: SAESpec,
    *,
    sae_config: dict[str, Any],
    optim: OptimSettings,
    dead_tokens: int,
    live_rate: float = 0.0,
    data: dict[str, Any],
    activation_scale: float | list[float],
    world_size: int,
    steps: int,
    device: str,
    num_rows: int | None = None,
) -> dict[str, Any]:
    """The run card of one SAE. num_rows: rows in the store (to report how many epochs the run covers)."""
    architecture = sae_config["architecture"]
    cls = sae_api.TRAINING_ARCHITECTURES.get(architecture)
    # The config fields that set this architecture's sparsity (the others do not apply to it).
    keys = getattr(cls, "sparsity_settings", tuple(sae_config))
    sparsity = {k: sae_config[k] for k in keys if sae_config.get(k) is not None}
    model = data.get("model") or {}
    return {
        "saeforge_version": __version__,
        "name": spec.name,
        "architecture": architecture,
        "model": model.get("path"),
        "model_fingerprint": model.get("fingerprint"),
        "hook_name": data.get("hook"),
        "d_in": sae_config["d_in"],
        "d_sae": sae_config["d_sae"],
        "sparsity": {
            "mechanism": getattr(cls, "description", architecture),
            **sparsity,
        },
        "initialisation": {k: sae_config[k] for k in INIT_SETTINGS if k in sae_config},
        "training": {
            "tokens": steps * cfg.batch_size,
            "steps": steps,
            "batch_size": cfg.batch_size,
            "batch_size_per_rank": cfg.batch_size // world_size,
            "world_size": world_size,
            "optimizer": {
                "name": optim.optimizer,
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
            },
            "schedule": {
                "lr_schedule": optim.lr_schedule,
                "lr_warmup_steps": optim.lr_warmup_steps,
                "lr_decay_steps": optim.lr_decay_steps,
                "lr_end_fraction": optim.lr_end_fraction,
                "sparsity_warmup_steps": optim.sparsity_warmup_steps,
            },
            "grad_clip_norm": optim.grad_clip_norm,
            "dead_tokens": dead_tokens,
            "live_rate": live_rate,
            "normalize_activations": cfg.normalize_activations,
            "activation_scale": activation_scale,
            "data_seed": cfg.seed,
            "dtype": cfg.dtype,
            "autocast": cfg.autocast,
            "device": device,
        },
        "data": {
            "activations": _paths(cfg.input_paths),
            "verified": cfg.verify if cfg.activations else None,
            **({"target_activations": str(cfg.target_activations)} if cfg.target_activations else {}),
            "epochs": steps * cfg.batch_size / num_rows if num_rows else None,
            **data,
        },
        "context_size": data.get("context_size"),
        "evaluation_datasets": list(cfg.evaluation_datasets),
    }
