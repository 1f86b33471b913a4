"""`python -m bench.peers quality`: every library's dictionary on the same token stream, scored identically.

    python -m bench.peers quality --problem toy --tokens 4_915_200 --curve-points 8 --json out.json
    python -m bench.peers quality --problem minilm --store CAPTURE/layers.3.resid_post --held-out HELD/... \\
        --d-sae 6144 --k 32 --batch 2048 --tokens 600_000

Each (library, architecture) trains in its own venv (bench/peers/quality_worker.py) with the library's own
training step and defaults (bench/peers/worker.py): SAELens's TopK/BatchTopK training SAEs with its trainer's
Adam (lr 3e-4, gradient clipping 1.0), sparsify's SparseCoder with its default schedule-free Signum,
dictionary_learning's TopKTrainer/BatchTopKTrainer (its auto learning rate, 1000 warm-up steps, AuxK 1/32),
saeforge's `train` with nothing but the architecture, d_sae and k given. Every run sees the same batches: step i
trains on rows INDEX[i] of one pool (uniform draws seeded by --seed, default 0, which also seeds every library's
initialisation). k is the same for all (matched L0 for the TopK family); BatchTopK's held-out L0 is whatever its
learnt threshold gives, reported as measured.

The workers run interleaved, one chunk of tokens / curve_points steps each in turn (the order rotated every
chunk), so a drift in the machine's load lands on all of them alike; after each chunk every worker encodes the
held-out tokens with its library's own inference path (untimed) and the coordinator computes, identically for
all: FVU = sum |x - x_hat|^2 / sum |x - mean(x)|^2, L0 (mean nonzeros per held-out row), dead fraction
(latents that fire on no held-out row), and on the toy MMCS (mean over the planted features of the best
decoder-row cosine, `saeforge.synthetic.feature_recovery`). That gives each run a curve of metric against its
own cumulative training seconds. Matched wall-clock: every curve is read at T = the fastest run's seconds for
the whole token count (linear interpolation between the curve's points; a run that reached fewer tokens by T
is read part-way through its schedule, so a library whose schedule decays towards the end is read before the
decay: stated beside the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARCH_LIBS = {
    "topk": ["saeforge", "sae_lens", "sparsify", "dictionary_learning"],
    "batchtopk": ["saeforge", "sae_lens", "dictionary_learning"],
}


def parse(argv: list[str]) -> argparse.Namespace:
    from bench.peers.__main__ import add_run_args

    p = argparse.ArgumentParser(prog="python -m bench.peers quality", description=__doc__.split("\n")[0])
    p.add_argument("--problem", choices=["toy", "minilm"], required=True)
    p.add_argument("--store", type=Path, help="minilm: the training activation store (saeforge capture)")
    p.add_argument("--held-out", type=Path, help="minilm: the held-out activation store")
    p.add_argument("--archs", default="topk,batchtopk")
    p.add_argument("--libs", default="saeforge,sae_lens,sparsify,dictionary_learning")
    p.add_argument(
        "--runs",
        default="",
        help="LIB/ARCH,...: exactly these runs (e.g. saeforge/topk beside every library's batchtopk) instead "
        "of every library of --libs for every architecture of --archs",
    )
    p.add_argument("--tokens", type=int, default=4_915_200)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--curve-points", type=int, default=8, help="chunks; held-out evaluation after each")
    p.add_argument("--held-out-tokens", type=int, default=65_536)
    p.add_argument(
        "--seed", type=int, default=0, help="the step index's draws and every run's initialisation"
    )
    add_run_args(p, threads=1, threads_help="torch threads per worker")
    return p.parse_args(argv)


def toy_data(a: argparse.Namespace, tmp: Path) -> tuple[Path, Path, np.ndarray]:
    """bench/quality.py's toy problem: its pool of 2^20 tokens, 65,536 unseen held-out tokens, the features."""
    import torch

    from bench.quality import TOY, toy_pool
    from saeforge.synthetic import SyntheticActivations

    np.save(tmp / "pool.npy", toy_pool(2**20, TOY).numpy())
    toy = SyntheticActivations(TOY)
    toy._generator = torch.Generator().manual_seed(2**31 - 1)
    np.save(tmp / "held.npy", toy.sample(a.held_out_tokens).numpy())
    return tmp / "pool.npy", tmp / "held.npy", toy.features.numpy()


def store_rows(path: Path, limit: int | None = None) -> np.ndarray:
    from saeforge.activations.store import ActivationStore

    store = ActivationStore.open(path)
    rows = np.concatenate([store.activations_array(i) for i in range(store.num_shards)])
    return np.ascontiguousarray(rows[:limit], dtype=np.float32)


def minilm_data(a: argparse.Namespace, tmp: Path) -> tuple[Path, Path, None]:
    if a.store is None or a.held_out is None:
        raise SystemExit(
            "--problem minilm needs --store and --held-out (saeforge capture of layers.3.resid_post)"
        )
    np.save(tmp / "pool.npy", store_rows(a.store))
    np.save(tmp / "held.npy", store_rows(a.held_out, a.held_out_tokens))
    return tmp / "pool.npy", tmp / "held.npy", None


def write_index(a: argparse.Namespace, pool_rows: int, tmp: Path) -> Path:
    steps = a.tokens // a.batch
    if steps < a.curve_points:
        raise SystemExit(
            f"--tokens {a.tokens} gives {steps} steps of --batch {a.batch}, fewer than the chunks"
        )
    index = np.random.default_rng(a.seed).integers(0, pool_rows, size=(steps, a.batch), dtype=np.int64)
    np.save(tmp / "index.npy", index)
    return tmp / "index.npy"


class QualityWorker:
    def __init__(self, lib: str, arch: str, python: str, args: list[str]):
        self.name, self.lib, self.arch = f"{lib}/{arch}", lib, arch
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [python, str(HERE / "quality_worker.py"), "--lib", lib, "--arch", arch, *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()
        self.seconds, self.curve = 0.0, []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode} (its stderr is above)")
        return json.loads(line)

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def score(out: Path, held: np.ndarray, features: np.ndarray | None) -> dict[str, float]:
    """The metrics of one held-out encoding (quality_worker's arrays), the same code for every library."""
    r = np.load(out)
    x = held.astype(np.float64)
    fvu = float(((x - r["x_hat"]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    row = {"fvu": fvu, "l0": float(r["l0"].mean()), "dead": float((r["fired"] == 0).mean())}
    if features is not None:
        import torch

        from saeforge.synthetic import feature_recovery

        row["mmcs"] = feature_recovery(torch.from_numpy(r["W_dec"]), torch.from_numpy(features))
    return row


def at_time(curve: list[dict], t: float) -> dict[str, float]:
    """A curve [{"seconds", "tokens", metrics...}] read at t seconds: linear between its points, its last point
    past its end; before its first point only the tokens are known."""
    if t >= curve[-1]["seconds"]:
        return {key: v for key, v in curve[-1].items() if key != "seconds"}
    pts = [{"seconds": 0.0, "tokens": 0}, *curve]
    lo, hi = next((lo, hi) for lo, hi in zip(pts, pts[1:], strict=False) if t <= hi["seconds"])
    w = (t - lo["seconds"]) / (hi["seconds"] - lo["seconds"])
    keys = [key for key in hi if key != "seconds" and key in lo]
    return {key: lo[key] + w * (hi[key] - lo[key]) for key in keys}


def selected_runs(a: argparse.Namespace, pythons: dict[str, str]) -> list[tuple[str, str]]:
    """(lib, arch) of every worker: --runs as given, else each library of --libs for each of --archs."""
    if a.runs:
        pairs = [tuple(item.split("/", 1)) for item in a.runs.split(",") if item]
        bad = [f"{lib}/{arch}" for lib, arch in pairs if arch not in ARCH_LIBS or lib not in ARCH_LIBS[arch]]
        if bad:
            raise SystemExit(f"--runs: no such run {bad}; known: {ARCH_LIBS}")
        return pairs
    return [(lib, arch) for arch in a.archs.split(",") for lib in ARCH_LIBS[arch] if lib in pythons]


def run(a: argparse.Namespace, pythons: dict[str, str], tmp: Path) -> dict:
    pool, held, features = (toy_data if a.problem == "toy" else minilm_data)(a, tmp)
    index = write_index(a, len(np.load(pool, mmap_mode="r")), tmp)
    held_x = np.load(held)
    steps = len(np.load(index, mmap_mode="r"))
    common = ["--pool", str(pool), "--index", str(index), "--d-sae", str(a.d_sae), "--k", str(a.k)]
    common += ["--threads", str(a.threads), "--seed", str(a.seed)]
    workers = []
    try:
        for lib, arch in selected_runs(a, pythons):
            print(f"[quality] starting {lib}/{arch}", file=sys.stderr, flush=True)
            workers.append(QualityWorker(lib, arch, pythons[lib], common))
        bounds = [round(steps * (c + 1) / a.curve_points) for c in range(a.curve_points)]
        done = 0
        for c, bound in enumerate(bounds):
            order = workers[c % len(workers) :] + workers[: c % len(workers)]
            for w in order:
                w.seconds += w.ask(f"train {bound - done}")["seconds"]
            for w in workers:
                out = tmp / f"{w.lib}-{w.arch}-{c}.npz"
                w.ask(f"eval {held} {out}")
                point = {"seconds": w.seconds, "tokens": bound * a.batch, **score(out, held_x, features)}
                w.curve.append(point)
                out.unlink()
                print(f"[quality] {w.name} chunk {c}: {json.dumps(point)}", file=sys.stderr, flush=True)
            done = bound
    finally:
        for w in workers:
            w.quit()
    t_match = min(w.seconds for w in workers)
    return {
        w.name: {"final": w.curve[-1], "at_matched_time": at_time(w.curve, t_match), "curve": w.curve}
        for w in workers
    } | {"_matched_seconds": t_match, "_steps": steps}


def render(results: dict) -> str:
    runs = {k: v for k, v in results["runs"].items() if not k.startswith("_")}
    toy = any("mmcs" in r["final"] for r in runs.values())
    t = results["runs"]["_matched_seconds"]
    head = "| run | tokens | train s | FVU | L0 | dead % |" + (" MMCS |" if toy else "")
    head += f" tokens by {t:.0f} s | FVU at {t:.0f} s |" + (f" MMCS at {t:.0f} s |" if toy else "")
    lines = [
        f"# {results['command']}",
        f"load before {results['load_before']}, after {results['load_after']}",
    ]
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in runs.items():
        f, m = r["final"], r["at_matched_time"]
        cells = [name, f"{f['tokens']:,}", f"{f['seconds']:.0f}", f"{f['fvu']:.4f}", f"{f['l0']:.1f}"]
        cells.append(f"{100 * f['dead']:.1f}")
        cells += [f"{f['mmcs']:.3f}"] if toy else []
        cells += [f"{m['tokens']:,.0f}", f"{m['fvu']:.4f}" if "fvu" in m else "-"]
        cells += [f"{m['mmcs']:.3f}" if "mmcs" in m else "-"] if toy else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from bench.peers.__main__ import _write, peer_pythons

    a = parse(argv)
    libs = [lib for lib in a.libs.split(",") if lib]
    if a.runs:
        libs = sorted({item.split("/", 1)[0] for item in a.runs.split(",") if item})
    pythons = {"saeforge": sys.executable} | peer_pythons([x for x in libs if x != "saeforge"], a.python)
    pythons = {lib: p for lib, p in pythons.items() if lib in libs}
    results = {
        "command": "python -m bench.peers quality " + " ".join(argv),
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "peers": pythons,
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["runs"] = run(a, pythons, Path(tmp))
    results["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(render(results))
    if a.json:
        _write(a.json, results)
    return 0
