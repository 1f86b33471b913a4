"""Latent sharding (issue 18, items 1-2): equivalence with one process and per-rank memory, torchrun on CPU (gloo).

1. Equivalence: a topk, a batchtopk and a jumprelu SAE trained 10 steps with tensor_parallel 2 (2 ranks) and
   2 x 2 (4 ranks) against the same run in one process; the largest relative (Frobenius) difference of any
   saved weight, float32.
2. Memory: one wide topk SAE (--d-in, --d-sae) on T = 1, 2, 4 ranks (D = 1): parameter + buffer + Adam +
   dead-counter bytes per rank (exact, from the live tensors) and each rank's peak RSS (ru_maxrss: torch itself
   included, so only the differences between layouts are the SAE state).

    python -m bench.tensor_parallel_bench [--d-in 256] [--d-sae 32768] [--json PATH]

Prints a table and writes JSON (default bench/results/tensor_parallel.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    dict(name="tk", architecture="topk", k=4, d_sae=64, k_aux=8),
    dict(name="bt", architecture="batchtopk", k=4, d_sae=48),
    dict(name="jr", architecture="jumprelu", d_sae=32, target_l0=6),
]


class Planted:
    """Global batch i: [batch_size, d_in] sparse sums of 64 planted directions (from seed i), sliced by rank."""

    def __init__(self, d_in: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.d_in, self.batch_size, self.rank, self.world_size = d_in, batch_size, rank, world_size
        g = torch.Generator().manual_seed(7)
        self.dirs = torch.nn.functional.normalize(torch.randn(64, d_in, generator=g), dim=1)
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.position)
        self.position += 1
        a = (torch.rand(self.batch_size, 64, generator=g) < 0.06) * torch.rand(
            self.batch_size, 64, generator=g
        )
        x = a @ self.dirs + 0.05 * torch.randn(self.batch_size, self.d_in, generator=g) + 1.0
        per = self.batch_size // self.world_size
        return x[self.rank * per : (self.rank + 1) * per]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def _config(out: Path, d_in: int, saes: list[dict], batch: int, tp: int = 1) -> dict:
    return dict(tokens=batch * 10, batch_size=batch, out=str(out), log_every=5, device="cpu", plots=False,
                dead_tokens=batch * 3, saes=saes, tensor_parallel=tp)  # fmt: skip


def worker(spec_path: str) -> None:
    """One torchrun rank: trains the spec's run and prints its state bytes and peak RSS."""
    from saeforge.train import TrainConfig, train

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tp = spec["config"]["tensor_parallel"]
    source = Planted(spec["d_in"], spec["config"]["batch_size"], rank // tp, world // tp)
    results = train(TrainConfig.parse(spec["config"]), source=source)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = sum(r.run_card["training"]["state_bytes_per_rank"] for r in results)
    print("RANK " + json.dumps({"rank": rank, "maxrss": maxrss, "state_bytes": state}), flush=True)


def _launch(tmp: Path, name: str, n: int, config: dict, d_in: int) -> list[dict]:
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps({"config": config, "d_in": d_in}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "bench.tensor_parallel_bench", "--worker", str(spec)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    ranks = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("RANK ")]
    return sorted(ranks, key=lambda r: r["rank"])


def _max_rel_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "sae_weights.safetensors")), load_file(str(b / "sae_weights.safetensors"))
    return max(float((wa[k] - wb[k]).norm() / wa[k].norm().clamp_min(1e-12)) for k in wa)


def equivalence(tmp: Path) -> dict:
    from saeforge.train import TrainConfig, train

    d_in, batch = 16, 64
    train(TrainConfig.parse(_config(tmp / "one", d_in, SMALL, batch)), source=Planted(d_in, batch))
    out = {}
    for label, tp, n in (("T=2", 2, 2), ("T=2 x D=2", 2, 4)):
        run = tmp / label.replace(" ", "")
        _launch(tmp, run.name, n, _config(run, d_in, SMALL, batch, tp), d_in)
        out[label] = {s["name"]: _max_rel_diff(tmp / "one" / s["name"], run / s["name"]) for s in SMALL}
    return out


def memory(tmp: Path, d_in: int, d_sae: int, batch: int) -> dict:
    sae = [dict(name="wide", architecture="topk", k=32, d_sae=d_sae)]
    out = {}
    for tp in (1, 2, 4):
        run = tmp / f"mem{tp}"
        ranks = _launch(tmp, run.name, tp, _config(run, d_in, sae, batch, tp), d_in)
        out[f"T={tp}"] = {
            "state_bytes_per_rank": ranks[0]["state_bytes"],
            "peak_rss_bytes_per_rank": [r["maxrss"] for r in ranks],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).with_name("results") / "tensor_parallel.json"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        eq = equivalence(Path(tmp))
        mem = memory(Path(tmp), args.d_in, args.d_sae, args.batch_size)
    print("Max relative weight difference after 10 steps, float32, vs one process")
    for label, diffs in eq.items():
        print(f"  {label:<10} " + "  ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(f"SAE state per rank, topk d_in {args.d_in}, d_sae {args.d_sae} (params + Adam + dead counters)")
    base = mem["T=1"]
    for label, m in mem.items():
        rss = max(m["peak_rss_bytes_per_rank"])
        print(
            f"  {label}: {m['state_bytes_per_rank'] / 2**20:8.1f} MiB "
            f"({m['state_bytes_per_rank'] / base['state_bytes_per_rank']:.3f} of T=1)   "
            f"peak RSS {rss / 2**20:8.1f} MiB (T=1: {max(base['peak_rss_bytes_per_rank']) / 2**20:.1f})"
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },  # fmt: skip
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": vars(args) | {"json": str(args.json)},
        "equivalence": eq,
        "memory": mem,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
