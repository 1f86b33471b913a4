"""Timing, machine description and floors shared by the benchmark sections.

Every timing is the median of `steps` calls after `warmup` untimed calls, with the min and max beside it
(the spread). Floors are what the hardware allows for a phase: FLOPs at the GEMM rate measured in the same run,
bytes at the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch


@dataclass
class Timing:
    """Seconds per call: median over the timed calls, fastest and slowest call."""

    median: float
    min: float
    max: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median, the relative spread of the timed calls."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "spread": self.spread}


def time_calls(fn: Callable[[], object], steps: int, warmup: int) -> Timing:
    """Calls fn `warmup` times untimed, then `steps` times timed; returns the Timing of the timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), len(times))


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per-phase median of a list of {phase: seconds} dicts."""
    return {name: statistics.median(s[name] for s in samples) for name in samples[0]}


class PhaseClock:
    """Splits calls into named phases by exclusive time: a phase entered inside another one stops the outer
    phase's clock until it exits. `wrap(name, fn)` times every call of fn as phase `name`."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._stack: list[str] = []
        self._t = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            name = self._stack[-1]
            self.phases[name] = self.phases.get(name, 0.0) + now - self._t
        self._t = now

    def enter(self, name: str) -> None:
        self._charge()
        self._stack.append(name)

    def exit(self) -> None:
        self._charge()
        self._stack.pop()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        return timed


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """What the numbers were measured on: CPU, cores, threads, torch build, load average, date."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15": [round(v, 2) for v in load],
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }


def gemm_rate(B: int, d_in: int, d_sae: int, steps: int, warmup: int) -> dict[str, float]:
    """The encoder matmul alone, [B, d_in] @ [d_in, d_sae] + b_enc (fp32), for both W_enc layouts.

    Returns seconds (median) and GFLOP/s (2 * B * d_in * d_sae / s) of the faster layout, and both timings.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, d_in, generator=g)
    b = torch.zeros(d_sae)
    out = torch.empty(B, d_sae)
    W_row = torch.randn(d_in, d_sae, generator=g)
    W_col = W_row.t().contiguous().t()
    t_row = time_calls(lambda: torch.addmm(b, x, W_row, out=out), steps, warmup)
    t_col = time_calls(lambda: torch.addmm(b, x, W_col, out=out), steps, warmup)
    best = min(t_row, t_col, key=lambda t: t.median)
    flops = 2.0 * B * d_in * d_sae
    return {
        "seconds": best.median,
        "gflops": flops / best.median / 1e9,
        "row_major": t_row.as_dict(),
        "column_major": t_col.as_dict(),
    }


def copy_bandwidth(n_bytes: int, steps: int, warmup: int) -> dict[str, float]:
    """Bytes moved per second (read + write) by a large fp32 tensor copy of n_bytes."""
    a = torch.ones(n_bytes // 4)
    c = torch.empty_like(a)
    t = time_calls(lambda: c.copy_(a), steps, warmup)
    return {"bytes": n_bytes, "seconds": t.median, "gbytes_per_s": 2 * n_bytes / t.median / 1e9}
