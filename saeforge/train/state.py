"""The checkpoint's tensor layout: the training state of a run, by name, in `state.safetensors`.

    sae/<name>/<key>                 the training SAE's state_dict (parameters and buffers)
    optim/<name>/<index>/<key>       Adam state of parameter <index> (exp_avg, exp_avg_sq, step)
    dead/<name>                      [d_sae] int64, tokens since each latent last fired
    live/<name>                      [W, d_sae] its fire counts in the last W batches, where kept (train/dead.py)
    acc/<name>/<key>                 float64 metric sums since the last record
    acc/input/<key>                  float64 input statistics since the last record (sum [d_in], sum_sq, rows)
    rng/cpu/<rank>, rng/cuda/<rank>  uint8 RNG states of every data-parallel rank

Everything else (step, loader positions, the config) is JSON in `state.json` (`saeforge.train.checkpoint`).
Restoring every one of these tensors, the loader positions and the RNG states is what makes a resumed run
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeforge.errors import ConfigError
from saeforge.train.config import OPERATIONAL_FIELDS, TrainConfig
from saeforge.train.data import data_fingerprint
from saeforge.train.dead import DeadClock


def encode_member(
    name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clock: DeadClock, acc: dict
) -> dict[str, Tensor]:
    """One SAE's training state as named tensors."""
    tensors = {f"sae/{name}/{k}": v for k, v in model.state_dict().items()}
    for idx, st in optimizer.state_dict()["state"].items():
        tensors.update({f"optim/{name}/{idx}/{k}": v for k, v in st.items() if isinstance(v, Tensor)})
    tensors.update(clock.tensors(name))
    tensors.update({f"acc/{name}/{k}": v for k, v in acc.items()})
    return tensors


def decode_member(
    t: dict[str, Tensor],
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    clock: DeadClock,
    device: torch.device,
) -> dict[str, Tensor]:
    """Loads one SAE's state from `t` into model, optimizer and the dead clock; returns its metric sums."""
    prefix = f"sae/{name}/"
    model.load_state_dict({k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)})
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    oprefix = f"optim/{name}/"
    for k, v in t.items():
        if k.startswith(oprefix):
            idx, key = k[len(oprefix) :].split("/")
            state.setdefault(int(idx), {})[key] = v
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
    clock.load(t, name)
    aprefix = f"acc/{name}/"
    return {k[len(aprefix) :]: v.to(device) for k, v in t.items() if k.startswith(aprefix)}


def encode_input(acc: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"acc/input/{k}": v for k, v in acc.items()}


def decode_input(t: dict[str, Tensor], keys, device: torch.device) -> dict[str, Tensor]:
    return {k: t[f"acc/input/{k}"].to(device) for k in keys}


def rank_state(source: Any, device: torch.device) -> dict[str, Any]:
    """This rank's JSON-able state: its loader position and RNG states (gathered to rank 0 on save)."""
    state_fn = getattr(source, "state_dict", None)
    return {
        "loader": state_fn() if callable(state_fn) else None,
        "rng_cpu": torch.get_rng_state().tolist(),
        "rng_cuda": torch.cuda.get_rng_state(device).tolist() if device.type == "cuda" else None,
    }


def encode_rng(ranks: list[dict[str, Any]]) -> dict[str, Tensor]:
    """The RNG states of every rank's `rank_state` as uint8 tensors."""
    tensors = {}
    for r, st in enumerate(ranks):
        tensors[f"rng/cpu/{r}"] = torch.tensor(st["rng_cpu"], dtype=torch.uint8)
        if st["rng_cuda"] is not None:
            tensors[f"rng/cuda/{r}"] = torch.tensor(st["rng_cuda"], dtype=torch.uint8)
    return tensors


def restore_rng(t: dict[str, Tensor], rank: int, device: torch.device) -> None:
    """Restores rank `rank`'s saved RNG states (none when the checkpoint had fewer ranks: elastic resume)."""
    if f"rng/cpu/{rank}" not in t:
        return
    torch.set_rng_state(t[f"rng/cpu/{rank}"])
    if device.type == "cuda" and f"rng/cuda/{rank}" in t:
        torch.cuda.set_rng_state(t[f"rng/cuda/{rank}"], device)


def check_resumable(meta: dict[str, Any], cfg: TrainConfig, stores: list[Any], checkpoint: Path) -> None:
    """Raises ConfigError unless `cfg` and the store can continue the checkpoint of `meta` (on any ranks)."""
    saved = {k: v for k, v in meta["config"].items() if k not in OPERATIONAL_FIELDS}
    now = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in OPERATIONAL_FIELDS}
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"resume: the configuration differs from the checkpoint's in {changed}; resume with the same "
            f"settings (see {checkpoint}/state.json) or start a new run in another out directory"
        )
    saved_data, data = meta.get("data_fingerprint"), data_fingerprint(stores)
    if saved_data and data and saved_data != data:
        raise ConfigError(
            f"activations: the store {', '.join(map(str, cfg.activation_paths))} holds other data than the run being resumed "
            f"(its shard checksums differ from those of {meta['config']['activations']}); point activations "
            "at the run's store"
        )


def loader_state(meta: dict[str, Any], rank: int, world_size: int, checkpoint: Path) -> Any:
    """This rank's saved loader state. On another rank count (elastic resume) the saved states must be one
    position of the global batch sequence, the same on every rank, as the activation loaders' are."""
    saved = meta["loaders"]
    if len(saved) == world_size:
        return saved[rank]
    if any(s != saved[0] for s in saved):
        raise ConfigError(
            f"resume: the checkpoint's {len(saved)} ranks have different batch-source positions (see "
            f"{checkpoint}/state.json), so it continues only on {len(saved)} ranks; resume with "
            f"--nproc_per_node {len(saved)}"
        )
    return saved[0]
