"""Peak memory of training steps, measured in a fresh process (torch's allocations are invisible to tracemalloc).

`python -m bench.memory ARCH B D_IN D_SAE K [STEPS] [ADAM]` builds the SAE and its optimiser, creates Adam's
moments with a zero-gradient step, records the resident set size (the weights + optimiser state baseline), resets
the kernel's peak-RSS mark, runs STEPS training steps and prints JSON with the baseline, the peak resident set
size over the steps (VmHWM of /proc/self/status) and their difference: the memory a step needs on top of weights
and optimiser state. (`ru_maxrss` would not do: Linux carries it over from the parent process across exec.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GIB = 1024**3


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _probe(arch: str, B: int, d_in: int, d_sae: int, k: int, steps: int, adam: str) -> dict[str, float]:
    from bench.steps import SaeforgeStep, Shape, _init_adam_state, activations, build_saeforge, make_adam

    shape = Shape("probe", B, d_in, d_sae, k)
    xs = activations(shape)
    model = build_saeforge(arch, shape)
    model.init_from_data(xs[0])
    opt = make_adam([p for p in model.parameters() if p.requires_grad], adam)
    _init_adam_state(model, opt)
    baseline = _status_bytes("VmRSS")
    peak_before = _status_bytes("VmHWM")
    _reset_peak()
    step = SaeforgeStep(model, opt, xs)
    for _ in range(steps):
        step()
    peak = _status_bytes("VmHWM")
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) * 3
    return {
        "arch": arch,
        "weights_and_adam_bytes": state_bytes,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "setup_peak_rss_bytes": peak_before,
        "step_peak_over_baseline_gib": (peak - baseline) / GIB,
    }


def measure_memory(arch: str, B: int, d_in: int, d_sae: int, k: int, steps: int = 3, adam: str = "saeforge"):
    """Runs the probe in a fresh interpreter; returns its JSON result as a dict."""
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "bench.memory",
        arch,
        str(B),
        str(d_in),
        str(d_sae),
        str(k),
        str(steps),
        adam,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {' '.join(cmd[2:])} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    a = sys.argv[1:]
    print(
        json.dumps(
            _probe(
                a[0], *map(int, a[1:5]), int(a[5]) if len(a) > 5 else 3, a[6] if len(a) > 6 else "saeforge"
            )
        )
    )
