"""`python -m bench [--quick] [--json PATH]`: saeforge's benchmark suite.

Sections (all in one run, so that every number is compared with floors and references measured beside it):
- machine: CPU, threads, load average; the encoder GEMM rate and the copy bandwidth (the floors);
- training: tokens/s of each architecture's training step, saeforge vs a plain PyTorch implementation of the
  same math, at a small and the realistic shape (d_in=768, d_sae=24576, k=64, 4096 tokens per step);
- phases: where a saeforge TopK / BatchTopK step spends its time, each phase beside its floor;
- adam: the optimiser step alone for torch's Adam implementations and saeforge's;
- memory: peak resident memory of a step above weights + optimiser state (fresh process);
- loop: the trainer's whole loop with data loading, against the bare step;
- eval: evaluation throughput (saeforge.eval.evaluate on activations);
- store: the activation store's benchmark (capture overhead, loader bandwidth), run as `bench.store_bench`;
- architectures (only when named in --sections): the sae stage's quality benchmark, `bench/architectures.py`.
`--quick` runs a tiny shape in seconds (a check that the harness works, not a measurement).
"""

from __future__ import annotations

import os

# Large CPU tensors are page-faulted in on every allocation; transparent huge pages cut that cost several times.
# torch reads this once, at its first large allocation.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import report  # noqa: E402
from bench.harness import copy_bandwidth, gemm_rate, machine_info  # noqa: E402
from bench.memory import measure_memory  # noqa: E402
from bench.steps import DENSE, QUICK, REALISTIC, SMALL, TOPK_FAMILY, measure, measure_adam  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny shape, few steps: checks the harness in seconds"
    )
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 2; quick 1)")
    p.add_argument(
        "--sections",
        default="training,phases,adam,memory,loop,eval,store",
        help="comma-separated sections to run (machine floors always run)",
    )
    p.add_argument("--archs", default=",".join(TOPK_FAMILY + DENSE), help="comma-separated architectures")
    p.add_argument(
        "--shapes", default="small,realistic", help="training shapes: small, realistic (ignored with --quick)"
    )
    return p.parse_args(argv)


def _optional_module(name: str):
    """bench.<name> written by another stage, or None when that file is not there."""
    if importlib.util.find_spec(f"bench.{name}") is None:
        return None
    return importlib.import_module(f"bench.{name}")


def _run_script(args: list[str], writes_json: bool = False) -> dict:
    """Runs another stage's benchmark script in a fresh interpreter; returns its printed table (and its JSON)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--json", str(Path(tmp) / "out.json")] if writes_json else []
        proc = subprocess.run([sys.executable, *args, *extra], capture_output=True, text=True, cwd=root)
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        out = {"stdout": proc.stdout}
        if writes_json:
            out["json"] = json.loads((Path(tmp) / "out.json").read_text())
        return out


def run(args: argparse.Namespace) -> dict:
    steps = args.steps or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    known = {s.name: s for s in (SMALL, REALISTIC)}
    shapes = [QUICK] if args.quick else [known[name] for name in args.shapes.split(",")]
    main_shape = shapes[-1]
    sections = set(args.sections.split(","))
    archs = args.archs.split(",")
    results: dict = {"command": "python -m bench " + " ".join(sys.argv[1:]), "machine": machine_info()}
    results["shapes"] = {s.name: {"B": s.B, "d_in": s.d_in, "d_sae": s.d_sae, "k": s.k} for s in shapes}

    floors = {}
    for s in shapes:
        floors[s.name] = {
            "gemm": gemm_rate(s.B, s.d_in, s.d_sae, steps, warmup),
            "copy": copy_bandwidth(4 * s.B * s.d_sae, steps, warmup),
        }
    results["floors"] = floors

    if "training" in sections:
        rows = []
        for s in shapes:
            for arch in archs:
                rows.append(measure(arch, s, "saeforge", steps, warmup, adam="saeforge"))
                rows.append(measure(arch, s, "plain", steps, warmup, adam="torch"))
                if arch == "topk":
                    rows.append(measure(arch, s, "saeforge", steps, warmup, adam="torch"))
        results["training"] = rows

    if "phases" in sections:
        results["phases"] = [
            measure(arch, main_shape, "saeforge", steps, warmup, adam="saeforge")
            for arch in archs
            if arch in TOPK_FAMILY
        ]

    if "adam" in sections:
        results["adam"] = measure_adam(main_shape, steps, warmup)

    if "memory" in sections:
        s = main_shape
        results["memory"] = [
            measure_memory(arch, s.B, s.d_in, s.d_sae, s.k, steps=3) for arch in archs if arch in TOPK_FAMILY
        ]

    if "loop" in sections:
        loop = _optional_module("loop")
        with tempfile.TemporaryDirectory() as tmp:
            results["loop"] = loop.measure_loop(main_shape, steps, warmup, Path(tmp)) if loop else None

    if "eval" in sections:
        from bench.evaluation import measure_eval

        results["eval"] = measure_eval(main_shape, n_batches=2 if args.quick else 4)

    if "store" in sections and _optional_module("store_bench"):
        results["store"] = _run_script(
            ["-m", "bench.store_bench", *(["--quick"] if args.quick else [])], True
        )
    if "architectures" in sections and _optional_module("architectures"):
        results["architectures"] = _run_script(
            ["bench/architectures.py", "--steps", "300" if args.quick else "3000"]
        )
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    results = run(args)
    print(report.render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=float))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
