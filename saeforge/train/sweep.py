"""Layers across ranks: a sweep over several hooks, each hook's SAEs trained by one rank on its own store.

With `distribute_hooks: true`, `activations` lists one store per hook (capture writes out/<hook>), and the run's
`saes` are trained on each store separately, into out/<store folder name>/ (its own metrics, run card and
checkpoints). Under torchrun with N ranks, hook i (in the order given) goes to rank i mod N; each rank opens
only the stores of its hooks and trains them one after another as ordinary one-process runs (no collective
between ranks: hooks share nothing), so a hook's result equals a one-process `train` of that hook's config,
bit for bit. Rank 0 writes out/placement.json ({hook folder: rank}) before training. One process trains every
hook in turn. Resume is per hook (`--resume` continues each from its own checkpoints, on any rank count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from saeforge.atomic import write_text
from saeforge.errors import ConfigError
from saeforge.train.config import TrainConfig
from saeforge.train.results import TrainedSAE
from saeforge.train.trainer import ProgressEvent, train

PLACEMENT = "placement.json"


def hook_runs(cfg: TrainConfig) -> dict[str, TrainConfig]:
    """{store folder name: the one-hook run}: `cfg` with one store each and out = cfg.out / <folder name>."""
    names = [Path(p).name for p in cfg.input_paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"distribute_hooks: stores {dupes} share a folder name; each hook's SAEs go to out/<folder name>, "
            "so give stores with distinct folder names (capture writes out/<hook>)"
        )
    return {
        name: cfg.model_copy(
            update={"activations": [Path(path)], "out": cfg.out / name, "distribute_hooks": False}
        )
        for name, path in zip(names, cfg.input_paths, strict=True)
    }


def placement(hooks: list[str], world_size: int) -> dict[str, int]:
    """{hook: rank}: hook i on rank i mod world_size. Every rank must get a hook (an idle rank is a mistake)."""
    if world_size > len(hooks):
        raise ConfigError(
            f"distribute_hooks: {len(hooks)} hooks on {world_size} ranks would leave ranks idle; launch at most "
            f"{len(hooks)} processes (torchrun --nproc_per_node {len(hooks)})"
        )
    return {hook: i % world_size for i, hook in enumerate(hooks)}


@contextmanager
def _one_process() -> Iterator[None]:
    """The trainer sees a one-process run (LOCAL_RANK, which picks cuda:LOCAL_RANK, is kept)."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
    os.environ.update(WORLD_SIZE="1", RANK="0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_hooks(
    cfg: TrainConfig, progress: Callable[[ProgressEvent], None] | None = None
) -> dict[str, list[TrainedSAE]]:
    """Trains this rank's hooks of a `distribute_hooks` run; returns {hook folder: its trained SAEs}.

    Rank and world size come from torchrun's RANK and WORLD_SIZE (one process: rank 0 of 1, every hook).
    `progress` is called on rank 0 after every step of each of its hooks.
    """
    if not cfg.distribute_hooks:
        raise ConfigError("train_hooks needs distribute_hooks: true (a plain run goes to train)")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    runs = hook_runs(cfg)
    placed = placement(list(runs), world)
    if rank == 0:
        cfg.out.mkdir(parents=True, exist_ok=True)
        write_text(cfg.out / PLACEMENT, json.dumps(placed, indent=2) + "\n")
    results = {}
    with _one_process():
        for hook, run in runs.items():
            if placed[hook] == rank:
                results[hook] = train(run, progress=progress if rank == 0 else None)
    return results
