"""Device specs for the layout planner: memory, sustained GEMM and memory rates, interconnect.

A spec holds *sustained* rates, the ones a step actually gets. The GPU presets are datasheet peaks (dense BF16
tensor-core FLOP/s, HBM bandwidth, NVLink bandwidth per direction, InfiniBand between nodes) times one
`efficiency` the planner assumes, 0.6 by default: they are not measured here (this machine has no GPU), and the
planner's output says so. The `cpu` spec is measured on this machine by `probe_cpu` (a float32 GEMM and a large
copy, best of a few); its link figure is gloo over loopback as measured by bench/plan_bench.py (recorded, not
probed: a probe would need two processes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saeforge.errors import ConfigError, format_validation_error

GiB = 2**30


class DeviceSpec(BaseModel):
    """One device of a layout, with the rates a training step sustains on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="label printed in the plan")
    memory_bytes: float = Field(gt=0, description="memory of one device")
    gemm_flops: float = Field(gt=0, description="sustained dense GEMM rate, FLOP/s")
    memory_bytes_per_s: float = Field(gt=0, description="sustained memory bandwidth, bytes/s")
    link_bytes_per_s: float = Field(gt=0, description="per-direction bandwidth between devices of a node")
    node_link_bytes_per_s: float = Field(gt=0, description="per-direction bandwidth per device between nodes")
    link_latency_s: float = Field(default=10e-6, ge=0, description="latency of one collective step")
    devices_per_node: int = Field(default=8, gt=0, description="devices joined by the fast link")
    measured: bool = Field(default=False, description="rates measured on this machine (not datasheet)")


def _gpu(name: str, memory_gib: float, tflops: float, hbm_tb_s: float, link_gb_s: float, efficiency: float):
    return DeviceSpec(
        name=name,
        memory_bytes=memory_gib * GiB,
        gemm_flops=efficiency * tflops * 1e12,
        memory_bytes_per_s=efficiency * hbm_tb_s * 1e12,
        link_bytes_per_s=efficiency * link_gb_s * 1e9,
        node_link_bytes_per_s=efficiency * 50e9,  # one 400 Gb/s InfiniBand NIC per GPU
    )


def gpu_presets(efficiency: float = 0.6) -> dict[str, DeviceSpec]:
    """Datasheet figures (dense BF16, HBM, NVLink per direction) scaled by `efficiency`."""
    return {
        "h100-80gb": _gpu("H100 SXM 80GB", 79.6, 989, 3.35, 450, efficiency),
        "h200-141gb": _gpu("H200 SXM 141GB", 140.0, 989, 4.8, 450, efficiency),
        "b200": _gpu("B200 180GB", 180.0, 2250, 8.0, 900, efficiency),
    }


PRESETS = (*gpu_presets(), "cpu")

# gloo all-reduce over loopback between two processes on the development machine (bench/plan_bench.py).
CPU_LINK_BYTES_PER_S = 1.0e9


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def probe_cpu(n: int = 1024, d_in: int = 512, d_out: int = 4096, copy_mib: int = 128, repeats: int = 3):
    """(GEMM FLOP/s, memory bytes/s) of this CPU: a float32 [n, d_in] @ [d_in, d_out] and a copy of
    `copy_mib` MiB, best of `repeats` (the rate a quiet moment gives; a loaded machine reads slower)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, d_in, generator=g), torch.randn(d_in, d_out, generator=g)
    gemm_s = _best_seconds(lambda: a @ b, repeats)
    src = torch.empty(copy_mib * 2**20 // 4)
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), repeats)
    return 2 * n * d_in * d_out / gemm_s, 2 * src.numel() * 4 / copy_s


def cpu_spec() -> DeviceSpec:
    """This machine's CPU as one device: measured GEMM and memory rates, physical memory, recorded link."""
    flops, bw = probe_cpu()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec(
        name="this CPU (measured)",
        memory_bytes=memory,
        gemm_flops=flops,
        memory_bytes_per_s=bw,
        link_bytes_per_s=CPU_LINK_BYTES_PER_S,
        node_link_bytes_per_s=CPU_LINK_BYTES_PER_S,
        link_latency_s=50e-6,
        devices_per_node=1 << 20,
        measured=True,
    )


def device_spec(name: str, efficiency: float = 0.6) -> DeviceSpec:
    """A preset by name (h100-80gb, h200-141gb, b200, cpu) or a YAML/JSON file of DeviceSpec fields."""
    presets = gpu_presets(efficiency)
    if name in presets:
        return presets[name]
    if name == "cpu":
        return cpu_spec()
    path = Path(name)
    if not path.is_file():
        raise ConfigError(
            f"--device-spec {name!r}: not a preset ({', '.join(PRESETS)}) nor a file; give a preset or a YAML "
            "file with name, memory_bytes, gemm_flops, memory_bytes_per_s, link_bytes_per_s, node_link_bytes_per_s"
        )
    try:
        return DeviceSpec.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
