"""Atomic checkpoint directories: safetensors for tensors, JSON for the rest.

Layout under `<out>/checkpoints/`:

    step_00000100/state.safetensors   every tensor (weights, Adam moments and steps, RNG states, counters)
    step_00000100/state.json          step, tokens, loader states, Adam param groups, resolved config
    latest                            the name of the newest complete checkpoint (one line)

A checkpoint is written into a temporary directory, each file fsynced, then renamed into place; `latest` is
replaced atomically afterwards. A crash at any moment leaves either the previous checkpoint or the new one, and
`latest` never names an incomplete directory. If `latest` is missing or stale, the newest complete directory
(one with `state.json`, which is written last) is used.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from saeforge.atomic import write_text

PREFIX = "step_"
LATEST = "latest"
TENSORS = "state.safetensors"
META = "state.json"


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:09d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under root, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / META).is_file() and _inside(root, p)
    ]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, Tensor], meta: dict[str, Any], keep: int
) -> Path:
    """Writes checkpoint `step` atomically, points `latest` at it and keeps the newest `keep` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS))
    _fsync(tmp / TENSORS)
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    if final.exists():
        # A resumed run re-reaching a step it had saved before being killed: swap the new copy in.
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)
    _fsync(root)
    write_text(root / LATEST, final.name + "\n")
    for old in list_checkpoints(root)[:-keep]:
        if old != final:
            shutil.rmtree(old)
    return final


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` resolves (symlinks followed) to a directory directly inside `root`."""
    return path.resolve().parent == root.resolve()


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one if `latest` is missing or stale.

    Raises ValueError when `latest` names anything but a checkpoint directory inside `root` (a path, `..`, a
    symlink out): that file was not written by saeforge, and nothing it points to is opened."""
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        candidate = root / name
        if not name.startswith(PREFIX) or Path(name).name != name or not _inside(root, candidate):
            raise ValueError(
                f"{pointer} names {name!r}, which is not a checkpoint directory inside {root} (it must be a "
                f"plain {PREFIX}NNNNNNNNN name); delete {pointer} to resume from the newest checkpoint there"
            )
        if (candidate / META).is_file():
            return candidate
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> Checkpoint:
    return Checkpoint(
        path=path, tensors=load_file(str(path / TENSORS)), meta=json.loads((path / META).read_text())
    )
