"""`python -m bench.peers`: saeforge's `train` loop beside the peers' own training steps, in one invocation.

    bash bench/peers/install.sh                       # once: one venv per peer, torch 2.13.0 kept
    python -m bench.peers --archs topk,batchtopk --warmup 5 --steps 10 --repeats 3 --json out.json
    python -m bench.peers quality --problem toy|minilm ...   # dictionary quality instead: bench/peers/quality.py

Every implementation runs in its own interpreter (its library's venv) as a worker (bench/peers/worker.py) that
trains on the same batches (a shared .npy file; saeforge reads the same rows from an activation store through
its own loader) and reports per-step seconds over a pipe. The coordinator interleaves them, A B C A B C ...,
`--steps` steps at a time, after `--warmup` untimed steps each, so that drift in the machine's load lands on
all of them alike. A ratio is taken within each repeat (saeforge's median step against the other's median
step of the same repeat) and reported as median with min and max over repeats. `gemm` is the encoder GEMM
alone (x @ W_enc + b_enc in --dtype), the floor of any exact dense method. Load average is recorded before and
after; peak memory is each worker's peak resident set (CPU) or allocator peak (CUDA).
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Which peer implements which architecture (its own training class).
PEER_ARCHS = {
    "sae_lens": {"topk", "batchtopk", "jumprelu", "gated", "standard"},
    "sparsify": {"topk"},
    "dictionary_learning": {"topk", "batchtopk", "jumprelu", "gated", "standard"},
}
FLOOR_ARCHS = {"topk", "batchtopk"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    p.add_argument("--archs", default="topk,batchtopk,jumprelu,gated,standard")
    p.add_argument("--libs", default="sae_lens,sparsify,dictionary_learning", help="peers to run beside")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype", default="float32", help="float32, or bfloat16 (autocast; the GEMM floor in bf16)"
    )
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per worker per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--batches",
        type=int,
        default=0,
        help="distinct batches of synthetic activations, cycled; 0 (default): one per step a worker takes "
        "(warmup + steps x repeats), so no batch is seen twice, as in a training run (epochs over a few noise "
        "batches crowd the bf16 screen's top pre-activations; docs/benchmarks.md)",
    )
    add_run_args(p, threads=0, threads_help="torch threads per worker (default: torch's)")
    a = p.parse_args(argv)
    a.batches = a.batches or a.warmup + a.steps * a.repeats
    return a


def add_run_args(p: argparse.ArgumentParser, threads: int, threads_help: str) -> None:
    """The options every harness of bench/peers shares: threads per worker, peer interpreters, JSON output."""
    p.add_argument("--threads", type=int, default=threads, help=threads_help)
    p.add_argument("--python", action="append", default=[], help="LIB=PATH: a peer's interpreter")
    p.add_argument("--json", type=Path, default=None, help="write the results here too")


def peer_pythons(libs: list[str], given: list[str]) -> dict[str, str]:
    """LIB -> interpreter: from --python LIB=PATH, else bench/peers/install.sh (builds missing venvs)."""
    out = dict(item.split("=", 1) for item in given)
    missing = [lib for lib in libs if lib not in out]
    if missing:
        proc = subprocess.run(
            ["bash", str(HERE / "install.sh"), *missing], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"bench/peers/install.sh failed:\n{proc.stderr[-3000:]}")
        out.update(line.split(" ", 1) for line in proc.stdout.splitlines() if line.strip())
    return out


def write_data(a: argparse.Namespace, tmp: Path, n_batches: int = 4) -> tuple[Path, Path]:
    """n_batches [batch, d_in] of synthetic activations (a shared mean direction plus noise) as .npy and as a
    saeforge activation store of the same rows."""
    import torch

    from saeforge.activations.writer import write_store

    g = torch.Generator().manual_seed(0)
    mean = torch.randn(a.d_in, generator=g)
    rows = mean + torch.randn(n_batches * a.batch, a.d_in, generator=g)
    npy = tmp / "batches.npy"
    np.save(npy, rows.view(n_batches, a.batch, a.d_in).numpy())
    write_store(tmp / "store", rows)
    return npy, tmp / "store"


class Worker:
    """One implementation in its own process; `run(n)` returns the seconds of n steps."""

    def __init__(self, name: str, python: str, args: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(HERE / "worker.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"worker {self.name} exited with {self.proc.returncode} (see its stderr above)"
            )
        return json.loads(line)

    def run(self, n: int) -> list[float]:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def quit(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        out = self._read()
        self.proc.wait(timeout=120)
        return out


def _workers(a: argparse.Namespace, arch: str, pythons: dict[str, str], npy: Path, store: Path, tmp: Path):
    common = ["--arch", arch, "--batches", str(npy), "--d-sae", str(a.d_sae), "--k", str(a.k)]
    common += ["--device", a.device, "--dtype", a.dtype, "--threads", str(a.threads)]
    env = dict(os.environ)
    total = a.warmup + a.steps * a.repeats + 2
    sf_env = {**env, "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}
    sf_args = ["--lib", "saeforge", "--store", str(store), "--out", str(tmp / f"run-{arch}")]
    specs = [("saeforge", sys.executable, [*sf_args, "--total-steps", str(total)], sf_env)]
    if arch in FLOOR_ARCHS:
        specs.append(("gemm", sys.executable, ["--lib", "gemm"], env))
    for lib, python in pythons.items():
        if arch in PEER_ARCHS[lib]:
            specs.append((lib, python, ["--lib", lib], env))
    workers = []
    for name, python, args, e in specs:
        print(f"[peers] {arch}: starting {name}", file=sys.stderr, flush=True)
        workers.append(Worker(name, python, [*args, *common], e))
    return workers


def bench_arch(a: argparse.Namespace, arch: str, pythons: dict[str, str], npy: Path, store: Path, tmp: Path):
    """Interleaved timings of every implementation of `arch`: per worker the median step of each repeat,
    tokens/s, peak memory; and saeforge's same-repeat ratios against each other worker."""
    workers = _workers(a, arch, pythons, npy, store, tmp)
    medians: dict[str, list[float]] = {w.name: [] for w in workers}
    try:
        for w in workers:
            if a.warmup:
                w.run(a.warmup)
        for r in range(a.repeats):
            order = workers[r % len(workers) :] + workers[: r % len(workers)]
            for w in order:
                medians[w.name].append(statistics.median(w.run(a.steps)))
                print(f"[peers] {arch} repeat {r}: {w.name} {medians[w.name][-1]:.3f} s", file=sys.stderr)
        memory = {w.name: {**w.quit(), "ready_rss_mb": w.ready["rss_mb"]} for w in workers}
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    rows = {}
    for name, ms in medians.items():
        rows[name] = {
            "step_s": statistics.median(ms),
            "step_s_per_repeat": ms,
            "tokens_per_s": a.batch / statistics.median(ms),
            "peak_mb": memory[name]["peak_mb"],
            "ready_rss_mb": memory[name]["ready_rss_mb"],
        }
    ratios = {}
    for name, ms in medians.items():
        if name != "saeforge":
            per = [o / s for s, o in zip(medians["saeforge"], ms, strict=True)]
            ratios[name] = {"median": statistics.median(per), "min": min(per), "max": max(per)}
    return {"impls": rows, "saeforge_speedup_over": ratios}


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# peer harness: {results['command']}",
        f"machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, threads {m['torch_threads']}; "
        f"load before {m['load_average_1_5_15']}, after {results['load_after']}",
        f"shape: {results['shape']}",
        "",
        "| arch | impl | step s (median) | tokens/s | peak MB | saeforge speed-up (median [min, max]) |",
        "|---|---|---|---|---|---|",
    ]
    for arch, r in results["archs"].items():
        for name, row in r["impls"].items():
            ratio = r["saeforge_speedup_over"].get(name)
            cell = f"{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]" if ratio else ""
            lines.append(
                f"| {arch} | {name} | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
                f"{row['peak_mb']:,.0f} | {cell} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.harness import machine_info

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quality"]:
        from bench.peers.quality import main as quality

        return quality(argv[1:])
    a = _parse(argv)
    libs = [lib for lib in a.libs.split(",") if lib]
    unknown = sorted(set(libs) - set(PEER_ARCHS))
    if unknown:
        raise SystemExit(f"--libs: unknown {unknown}; choose from {sorted(PEER_ARCHS)}")
    pythons = peer_pythons(libs, a.python)
    results = {
        "command": "python -m bench.peers " + " ".join(argv),
        "machine": machine_info(),
        "shape": {
            "d_in": a.d_in,
            "d_sae": a.d_sae,
            "k": a.k,
            "batch": a.batch,
            "device": a.device,
            "dtype": a.dtype,
            "warmup": a.warmup,
            "steps": a.steps,
            "repeats": a.repeats,
            "batches": a.batches,
        },
        "peers": pythons,
        "archs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        npy, store = write_data(a, Path(tmp), a.batches)
        for arch in a.archs.split(","):
            results["archs"][arch] = bench_arch(a, arch, pythons, npy, store, Path(tmp))
            if a.json:
                _write(a.json, results)
    results["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(render(results))
    if a.json:
        _write(a.json, results)
    return 0


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
