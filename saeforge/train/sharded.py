"""Latent-sharded checkpoints and SAE files: one safetensors file per tensor rank plus a JSON index, no pickle.

A checkpoint of a run with tensor_parallel T > 1:

    step_00000100/shard-00000-of-00002.safetensors   tensor rank 0's latents of every sharded tensor, and every
                                                     replicated one (b_dec, Adam steps, metric sums, RNG states)
    step_00000100/shard-00001-of-00002.safetensors   tensor rank 1's latents
    step_00000100/state.index.json                   per tensor: its whole shape, latent dim and pieces
    step_00000100/state.json                         as in a one-process checkpoint (written last)

A tensor keeps its full name (`sae/<name>/W_enc`) in every file; the index lists the files holding its latent
ranges. A run on T' x D' ranks reads, of each sharded tensor, only its own latent range (safetensors slices),
whatever T wrote it; a one-process checkpoint (`state.safetensors`, no index) reads the same way, as one piece.

Commit is atomic across ranks: the tensor group's writers fill `.tmp-step_...`, a barrier, then rank 0 writes
the index and state.json, fsyncs, renames the folder into place and moves `latest` (`saeforge.train.checkpoint`).
A rank killed before the rename leaves the previous checkpoint the latest; the next save of that step starts over.

`save_sharded_sae` writes the exported shards as one ordinary SAELens-layout SAE: rank 0 lays out the whole
safetensors file and copies each tensor rank's slices into it as they arrive, so no rank holds a whole matrix.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from saeforge.atomic import write_text
from saeforge.train import state
from saeforge.train.checkpoint import (
    META,
    TENSORS,
    _fsync,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from saeforge.train.tensor_parallel import Mesh, latent_dim

INDEX = "state.index.json"
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16", torch.float16: "F16"}


def shard_file(rank: int, ranks: int) -> str:
    return f"shard-{rank:05d}-of-{ranks:05d}.safetensors"


def member_dims(name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """The checkpoint keys of one SAE's latent-indexed tensors (see train/state.py), with their latent dim (the
    dead clock's live/<name> where it is kept)."""
    dims = {f"dead/{name}": 0, f"live/{name}": 1}
    for key, t in model.state_dict().items():
        if (dim := latent_dim(key, t.ndim)) is not None:
            dims[f"sae/{name}/{key}"] = dim
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for idx, (key, p) in enumerate(trained):
        if (dim := latent_dim(key, p.ndim)) is not None:
            for moment in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                dims[f"optim/{name}/{idx}/{moment}"] = dim
    return dims


def run_tensors(members: list[Any], input_acc: dict[str, Tensor], mesh: Mesh) -> tuple[dict, dict[str, int]]:
    """This rank's checkpoint tensors of the run's SAEs (train/state.py) and the latent dims of the sharded ones.

    The metric sums are summed over the data group (restored onto one of its ranks), so any layout resumes them."""
    tensors: dict[str, Tensor] = {}
    dims: dict[str, int] = {}
    for m in members:
        acc = {k: mesh.dp_sum_(v.clone()) for k, v in m.acc.items()}
        tensors.update(state.encode_member(m.name, m.model, m.optimizer, m.clock, acc))
        dims.update(member_dims(m.name, m.model, m.optimizer))
    tensors.update(state.encode_input({k: mesh.dp_sum_(v.clone()) for k, v in input_acc.items()}))
    return tensors, dims


def write_checkpoint(
    root: Path, step: int, tensors: dict[str, Tensor], dims: dict[str, int], meta: dict | None, keep: int,
    mesh: Mesh,
) -> Path:  # fmt: skip
    """Every rank calls this: a sharded checkpoint under latent sharding, else rank 0's one-file checkpoint."""
    if mesh.sharded:
        return save_sharded(root, step, tensors, dims, meta, keep, mesh)
    if mesh.ctx.is_main:
        save_checkpoint(root, step, tensors, meta, keep)
    mesh.ctx.barrier()
    return root / checkpoint_name(step)


def read_checkpoint(path: Path, members: list[Any], mesh: Mesh) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(meta, tensors) of checkpoint `path` for this rank: its latent slices when the run or the checkpoint is
    sharded, else the one-process checkpoint as written. The metric sums (`acc/`, saved summed over the data
    group) go to the first rank of each data group, zeros to the others."""
    if not mesh.sharded and not (path / INDEX).is_file():
        ckpt = load_checkpoint(path)
        meta, tensors = ckpt.meta, ckpt.tensors
    else:
        dims = {k: d for m in members for k, d in member_dims(m.name, m.model, m.optimizer).items()}
        meta = json.loads((path / META).read_text())
        tensors = read_slices(path, dims, mesh.tp_rank, mesh.tp)
    if mesh.dp_rank:
        tensors = {k: torch.zeros_like(v) if k.startswith("acc/") else v for k, v in tensors.items()}
    return meta, tensors


def save_sharded(
    root: Path, step: int, tensors: dict[str, Tensor], dims: dict[str, int], meta: dict | None, keep: int,
    mesh: Mesh,
) -> Path:  # fmt: skip
    """Every rank calls this with its tensors; the first data rank of each tensor rank writes its shard file
    (tensor rank 0 also the replicated tensors), rank 0 (holding `meta`) commits. Returns the checkpoint path."""
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    if mesh.ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    mesh.ctx.barrier()
    if mesh.dp_rank == 0:
        mine = {k: v for k, v in tensors.items() if k in dims or mesh.tp_rank == 0}
        path = tmp / shard_file(mesh.tp_rank, mesh.tp)
        save_file({k: v.detach().contiguous().cpu() for k, v in mine.items()}, str(path))
        _fsync(path)
    mesh.ctx.barrier()
    if mesh.ctx.is_main:
        write_text(tmp / INDEX, json.dumps(_index(tensors, dims, mesh.tp), indent=1))
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
        write_text(root / "latest", final.name + "\n")
        for old in list_checkpoints(root)[:-keep]:
            if old != final:
                shutil.rmtree(old)
    mesh.ctx.barrier()
    return final


def _index(tensors: dict[str, Tensor], dims: dict[str, int], ranks: int) -> dict[str, Any]:
    """The JSON index of a checkpoint written by `ranks` equal tensor shards (rank 0's tensors at hand)."""
    out = {}
    for key, t in sorted(tensors.items()):
        shape, dim = list(t.shape), dims.get(key)
        if dim is None:
            out[key] = {"shape": shape, "dim": None, "pieces": [[shard_file(0, ranks), None, None]]}
            continue
        n = shape[dim]
        shape[dim] = n * ranks
        pieces = [[shard_file(r, ranks), r * n, (r + 1) * n] for r in range(ranks)]
        out[key] = {"shape": shape, "dim": dim, "pieces": pieces}
    return {"format": "saeforge-sharded-checkpoint", "version": 1, "tensor_parallel": ranks, "tensors": out}


def _read(path: Path, key: str, dim: int | None, lo: int | None, hi: int | None) -> Tensor:
    with safe_open(str(path), framework="pt") as f:
        if dim is None:
            return f.get_tensor(key)
        return f.get_slice(key)[(slice(None),) * dim + (slice(lo, hi),)]


def read_slices(path: Path, dims: dict[str, int], part: int, parts: int) -> dict[str, Tensor]:
    """A checkpoint's tensors for latent shard `part` of `parts`: the range [part * n, (part + 1) * n) of each
    latent-indexed tensor in `dims`, every other tensor whole. Reads a sharded or a one-process checkpoint."""
    if (path / INDEX).is_file():
        index = json.loads((path / INDEX).read_text())["tensors"]
    else:
        with safe_open(str(path / TENSORS), framework="pt") as f:
            index = {
                k: {"shape": f.get_slice(k).get_shape(), "pieces": [[TENSORS, 0, None]]} for k in f.keys()
            }
    out = {}
    for key, entry in index.items():
        dim = dims.get(key)
        if dim is None:
            out[key] = _read(path / entry["pieces"][0][0], key, None, None, None)
            continue
        whole = entry["shape"][dim]
        lo, hi = part * whole // parts, (part + 1) * whole // parts
        chunks = []
        for file, start, stop in entry["pieces"]:
            start, stop = start or 0, whole if stop is None else stop
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                chunks.append(_read(path / file, key, dim, a - start, b - start))
        out[key] = torch.cat(chunks, dim)
    return out


def save_sharded_sae(shard: Any, path: Path, metadata: dict[str, Any], mesh: Mesh, d_sae: int) -> None:
    """Writes the whole SAE whose tensor rank t holds the exported shard `shard` (an inference SAE of d_sae / T
    latents) to `path` as one SAELens-layout SAE. Called by every rank of the first data group; rank 0 writes."""
    from saeforge.sae.io import save_sae

    weights = {k: v.to("cpu").contiguous() for k, v in shard.weights_for_saving().items()}
    layout = {k: (v, latent_dim(k, v.ndim)) for k, v in sorted(weights.items())}
    if mesh.tp_rank != 0:
        for t, dim in layout.values():
            if dim is not None:
                dist.send(t, dst=mesh.ctx.rank - mesh.tp_rank, group=None)
        return
    header, offset = {}, 0
    for key, (t, dim) in layout.items():
        shape = list(t.shape)
        if dim is not None:
            shape[dim] *= mesh.tp
        nbytes = t.element_size() * int(torch.Size(shape).numel())
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            f.truncate(8 + len(text) + offset)
        data = torch.from_file(tmp, shared=True, size=8 + len(text) + offset, dtype=torch.uint8)
        body = data[8 + len(text) :]
        for key, (t, dim) in layout.items():
            a, b = header[key]["data_offsets"]
            region = body[a:b].view(t.dtype).view(header[key]["shape"])
            n = 1 if dim is None else t.shape[dim]
            for r in range(1 if dim is None else mesh.tp):
                piece = t if r == 0 else torch.empty_like(t)
                if r:
                    dist.recv(piece, src=mesh.ctx.rank + r)
                (region if dim is None else region.narrow(dim, r * n, n)).copy_(piece)
                del piece
        del data, body
        _fsync(Path(tmp))

    save_sae(_Whole(shard, d_sae), path, metadata=metadata, write_weights=write)


class _Whole:
    """What `save_sae` reads of an SAE besides its weights (cfg, saved_cfg), for the whole of a sharded one."""

    def __init__(self, shard: Any, d_sae: int):
        self.cfg = shard.cfg.model_copy(update={"d_sae": d_sae})
        self.saved_cfg = shard.saved_cfg
