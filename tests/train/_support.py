"""Test support for the trainer: a synthetic batch source and a worker entry point for subprocess tests.

python tests/train/_support.py SPEC.json     runs `train` as SPEC describes (see `main`)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class SyntheticSource:
    """Deterministic global batches of sparse combinations of planted directions, sliced by rank.

    Global batch i: [batch_size, d_in]; rank r of w yields rows [r * b / w, (r + 1) * b / w).
    nan_at: global batch index whose first row is NaN (fault tests).
    """

    def __init__(
        self,
        d_in: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        nan_at: int | None = None,
        n_features: int = 48,
    ):
        self.d_in, self.batch_size, self.seed = d_in, batch_size, seed
        self.rank, self.world_size, self.nan_at = rank, world_size, nan_at
        g = torch.Generator().manual_seed(1234)
        feats = torch.randn(n_features, d_in, generator=g)
        self.features = feats / feats.norm(dim=-1, keepdim=True)
        self.position = 0

    def global_batch(self, i: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        n = self.features.shape[0]
        active = torch.rand(self.batch_size, n, generator=g) < 4 / n
        mags = torch.rand(self.batch_size, n, generator=g) * 3 + 0.5
        x = (active * mags) @ self.features + 0.05 * torch.randn(self.batch_size, self.d_in, generator=g)
        if self.nan_at == i:
            x[0, 0] = float("nan")
        return x + 2.0

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        x = self.global_batch(self.position)
        self.position += 1
        per = self.batch_size // self.world_size
        return x[self.rank * per : (self.rank + 1) * per]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]

    def last_source(self) -> str:
        return f"synthetic batch {self.position - 1}"


class PlantedSites:
    """Aligned tuples of planted sparse features, for crosscoders and transcoders; sliced by rank like
    SyntheticSource, with exact state.

    Feature j fires on a token with probability l0 / n_features, magnitude in [0.5, 3.5); it writes direction
    dirs[s][j] (unit, or zero where the feature is absent from site s) into site s, plus noise 0.02.
    crosscoder: `shared` features write to every site, then `specific` features per site to that site only.
    transcoder: two sites, input and target; every feature writes to both (the target is a known sparse map of
    the input: y = sum_j a_j v_j where x = sum_j a_j u_j).
    """

    def __init__(self, d_in, batch_size, n_sites=2, shared=12, specific=6, l0=4.0, seed=0, rank=0, world_size=1,
                 d_out=None):  # fmt: skip
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        g = torch.Generator().manual_seed(99)
        widths = [d_in] * n_sites if d_out is None else [d_in, d_out]
        n = shared + specific * n_sites
        self.dirs = []
        for s, w in enumerate(widths):
            d = torch.randn(n, w, generator=g)
            d = d / d.norm(dim=1, keepdim=True)
            if d_out is None:
                present = torch.zeros(n, dtype=torch.bool)
                present[:shared] = True
                present[shared + s * specific : shared + (s + 1) * specific] = True
                d = d * present[:, None]
            self.dirs.append(d)
        self.shared, self.specific, self.n, self.l0 = shared, specific, n, l0
        self.position = 0

    def global_batch(self, i: int) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        active = torch.rand(self.batch_size, self.n, generator=g) < self.l0 / self.n
        a = active * (torch.rand(self.batch_size, self.n, generator=g) * 3 + 0.5)
        return tuple(a @ d + 0.02 * torch.randn(self.batch_size, d.shape[1], generator=g) for d in self.dirs)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Tensor, ...]:
        parts = self.global_batch(self.position)
        self.position += 1
        per = self.batch_size // self.world_size
        return tuple(x[self.rank * per : (self.rank + 1) * per] for x in parts)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def _block_after_writing_shard(step: int) -> None:
    """Makes this rank print "BLOCKED <pid>" and sleep once it has written its shard of checkpoint `step`."""
    from saeforge.train import sharded

    write = sharded.save_file

    def write_then_block(tensors, path):
        write(tensors, path)
        if f"step_{step:09d}" in str(path):
            print(f"BLOCKED {os.getpid()}", flush=True)
            time.sleep(600)

    sharded.save_file = write_then_block


def main(spec_path: str) -> None:
    """Runs `train` on a SyntheticSource. SPEC: {"config": TrainConfig dict, "source": SyntheticSource kwargs,
    "action_at": step, "action": "sigterm" | "block" | "block_in_save" (on rank "block_rank", default 1)}.
    Under torchrun each data-parallel rank reads its slice."""
    from saeforge.train import TrainConfig, TrainingInterrupted, train

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tp = spec["config"].get("tensor_parallel", 1)  # the ranks of a tensor group read the same slice
    source_cls = PlantedSites if spec.get("planted") else SyntheticSource
    source = source_cls(**spec["source"], rank=rank // tp, world_size=world // tp)
    action_at, action = spec.get("action_at"), spec.get("action")
    if action == "block_in_save" and rank == spec.get("block_rank", 1):
        _block_after_writing_shard(action_at)

    def progress(event):
        if event.step == action_at and action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif event.step == action_at and action == "block":
            print("BLOCKED", flush=True)
            time.sleep(600)

    try:
        results = train(TrainConfig.parse(spec["config"]), source=source, progress=progress)
    except TrainingInterrupted as e:
        print(f"INTERRUPTED {e}", flush=True)
        sys.exit(3)
    print("DONE " + json.dumps({r.name: r.metrics for r in results}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
