"""Per-rank memory, step time, wall time and cost of a TopK SAE run on T x D devices (tensor x data parallel).

A rank of a T x D layout holds s = d_sae / T latents (its columns of W_enc and rows of W_dec, their Adam state)
and reads b = B / D rows of each global batch of B tokens. All sizes are float32 (4 bytes); times assume no
overlap of compute and communication (an upper bound on a step). With P = 2 d_in s + s + d_in local parameters:

    memory   weights 4P + Adam moments 8P + gradients 4P (reduced in place across replicas: no buffer)
             + activations 4 b (2 s + 3 d_in) + 12 b T k (the gathered top-k candidates, fp32 value + int64 index)
    compute  encoder GEMM        2 b d_in s / gemm_flops           (the only dense product of a TopK step)
             sparse encoder/decoder  6 * 4 b (k / T) d_in / mem_bw (gather/scatter of the b k / T local pairs:
                                 forward values, decode, and the gradients of x, W_enc, vals, W_dec)
             selection           2 * 4 b s / mem_bw                (write and read the [b, s] pre-activations)
             update              (32 P + 32 d_in s) / mem_bw       (fused Adam reads p, g, m, v and writes p, m, v;
                                 the dense gradient is written once; the unit-norm decoder and the b_dec fold
                                 read and write W_dec and W_enc once more)
    TP comm  all-gather of candidates   (T - 1) (a + 12 b k / bw)          (ring, over the T ranks of a group)
             all-reduce of x_hat        2 (T - 1) (a + 4 b d_in / (T bw))  (the [b, d_in] partial reconstruction)
    DP comm  gradient all-reduce        2 (D - 1) (a + 4 P / (D bw))       (ring, over the D replicas of a shard)

a is the link latency and bw the per-direction link bandwidth: the node's link when the group's ranks share a node
(tensor groups are contiguous ranks; data groups stride by T), the inter-node link otherwise. A layout fits when
its per-rank memory is at most `headroom` (0.9) of the device's (the rest: allocator slack, CUDA context).
Not modelled: AuxK (adds its k_aux pairs while latents are dead), logging and evaluation, the data loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saeforge.plan.devices import DeviceSpec

FP32 = 4
HEADROOM = 0.9


@dataclass(frozen=True)
class Layout:
    tensor: int  # T: latent shards
    data: int  # D: replicas

    @property
    def devices(self) -> int:
        return self.tensor * self.data

    def __str__(self) -> str:
        return f"{self.tensor}x{self.data}"


@dataclass(frozen=True)
class LayoutPlan:
    """One layout's prediction: bytes per rank, seconds per step and for the whole run."""

    layout: Layout
    weight_bytes: float
    adam_bytes: float
    grad_bytes: float
    activation_bytes: float
    gemm_s: float
    sparse_s: float
    select_s: float
    update_s: float
    tp_comm_s: float
    dp_comm_s: float
    steps: int
    fits: bool
    price_per_device_hour: float | None

    @property
    def memory_bytes(self) -> float:
        return self.weight_bytes + self.adam_bytes + self.grad_bytes + self.activation_bytes

    @property
    def step_s(self) -> float:
        return self.gemm_s + self.sparse_s + self.select_s + self.update_s + self.tp_comm_s + self.dp_comm_s

    @property
    def wall_s(self) -> float:
        return self.steps * self.step_s

    @property
    def device_hours(self) -> float:
        return self.wall_s / 3600 * self.layout.devices

    @property
    def cost(self) -> float | None:
        if self.price_per_device_hour is None:
            return None
        return self.device_hours * self.price_per_device_hour


def parse_layout(text: str) -> Layout:
    """ "TxD" (e.g. "4x2": 4 latent shards, 2 replicas) -> Layout."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(
            f"layout {text!r}: write TxD with positive integers, e.g. 4x2 (T latent shards, D replicas)"
        )
    return Layout(int(m[1]), int(m[2]))


def layouts_up_to(devices: int) -> list[Layout]:
    """Every T x D with T and D powers of two and T * D <= devices, by device count then T."""
    powers = [1 << i for i in range(devices.bit_length()) if 1 << i <= devices]
    return sorted(
        (Layout(t, d) for t in powers for d in powers if t * d <= devices),
        key=lambda lay: (lay.devices, lay.tensor),
    )


def _ring(n: int, stride: int, dev: DeviceSpec) -> tuple[float, float]:
    """(latency, bandwidth) of a ring over n ranks `stride` apart: the node link if they share a node."""
    within = n * stride <= dev.devices_per_node
    return dev.link_latency_s, dev.link_bytes_per_s if within else dev.node_link_bytes_per_s


def check_layout(layout: Layout, d_sae: int, k: int, batch: int) -> None:
    """Raises ValueError when the layout cannot run this SAE: T must divide d_sae, D the batch, k <= d_sae / T."""
    if d_sae % layout.tensor:
        raise ValueError(f"layout {layout}: T={layout.tensor} does not divide d_sae={d_sae}")
    if batch % layout.data:
        raise ValueError(f"layout {layout}: D={layout.data} does not divide the batch of {batch} tokens")
    if k > d_sae // layout.tensor:
        raise ValueError(f"layout {layout}: k={k} exceeds the {d_sae // layout.tensor} latents of a shard")


def plan_layout(
    layout: Layout,
    d_in: int,
    d_sae: int,
    k: int,
    batch: int,
    tokens: int,
    device: DeviceSpec,
    price_per_device_hour: float | None = None,
) -> LayoutPlan:
    """The prediction for one layout (the module docstring's formulas)."""
    check_layout(layout, d_sae, k, batch)
    T, D = layout.tensor, layout.data
    s, b = d_sae // T, batch // D
    P = 2 * d_in * s + s + d_in
    grads = FP32 * P
    acts = FP32 * b * (2 * s + 3 * d_in) + 12 * b * T * k
    bw = device.memory_bytes_per_s
    a_tp, bw_tp = _ring(T, 1, device)
    a_dp, bw_dp = _ring(D, T, device)
    tp = (T - 1) * (a_tp + 12 * b * k / bw_tp) + 2 * (T - 1) * (a_tp + FP32 * b * d_in / (T * bw_tp))
    dp = 2 * (D - 1) * (a_dp + FP32 * P / (D * bw_dp))
    memory = FP32 * P * 3 + grads + acts
    return LayoutPlan(
        layout=layout,
        weight_bytes=FP32 * P,
        adam_bytes=2 * FP32 * P,
        grad_bytes=grads,
        activation_bytes=acts,
        gemm_s=2 * b * d_in * s / device.gemm_flops,
        sparse_s=6 * FP32 * b * (k / T) * d_in / bw,
        select_s=2 * FP32 * b * s / bw,
        update_s=(32 * P + 32 * d_in * s) / bw,
        tp_comm_s=tp,
        dp_comm_s=dp,
        steps=tokens // batch,
        fits=memory <= HEADROOM * device.memory_bytes,
        price_per_device_hour=price_per_device_hour,
    )


def plan_layouts(
    d_in: int,
    d_sae: int,
    k: int,
    batch: int,
    tokens: int,
    device: DeviceSpec,
    layouts: list[Layout] | None = None,
    max_devices: int = 8,
    price_per_device_hour: float | None = None,
) -> list[LayoutPlan]:
    """Predictions for `layouts` (each must fit the SAE, else ValueError), or for every power-of-two T x D up to
    `max_devices` that can run it."""
    if layouts is None:
        candidates = layouts_up_to(max_devices)
        layouts = [lay for lay in candidates if _runs(lay, d_sae, k, batch)]
    return [plan_layout(lay, d_in, d_sae, k, batch, tokens, device, price_per_device_hour) for lay in layouts]


def _runs(layout: Layout, d_sae: int, k: int, batch: int) -> bool:
    try:
        check_layout(layout, d_sae, k, batch)
    except ValueError:
        return False
    return True


class LayoutConfig(BaseModel):
    """The layouts `saeforge plan` compares (the SAE's width and the token budget come with PlanConfig)."""

    model_config = ConfigDict(extra="forbid")

    d_in: int | None = Field(default=None, gt=0, description="model width (default: read from --model)")
    d_sae: int | None = Field(default=None, gt=0, description="latents (default: expansion_factor * d_in)")
    k: int = Field(default=64, gt=0, description="active latents per token of the TopK SAE")
    train_batch_size: int = Field(default=4096, gt=0, description="global training batch in tokens")
    device_spec: str | None = Field(
        default=None,
        description="compare T x D layouts on this device: h100-80gb, h200-141gb, b200, cpu (measured here) or a "
        "YAML file of DeviceSpec fields",
    )
    efficiency: float = Field(
        default=0.6, gt=0, le=1, description="share of a GPU preset's datasheet peaks a step sustains"
    )
    layouts: list[str] = Field(
        default_factory=list, description="TxD layouts to compare, e.g. 1x8 2x4 (default: powers of two)"
    )
    max_devices: int = Field(default=8, gt=0, description="largest T * D compared when no --layout is given")
    price_per_device_hour: float | None = Field(default=None, ge=0, description="price of one device-hour")

    @field_validator("layouts")
    @classmethod
    def _layouts(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_layout(text)
        return v
