"""Metric sums between records, and their reduction into one record per SAE.

Between two records every rank adds, in float64, its batches' input statistics (column sums [d_in], sum of
squares, rows) and per SAE the step count, the squared reconstruction error, L0, the loss and its terms. A
record all-reduces the sums once and divides: FVU = SSE / (sum ||x||^2 - ||sum x||^2 / rows), the other
metrics are means over the steps. These sums are part of a checkpoint (`saeforge.train.state`), so a resumed
run logs the same records as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeforge.activations.stats import centred_sum_sq

INPUT_KEYS = ("sum", "sum_sq", "rows")
SAE_KEYS = ("steps", "sse", "l0", "loss")


def _zeros(shape, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


def input_sums(d_in: int, device: torch.device) -> dict[str, Tensor]:
    return {"sum": _zeros(d_in, device), "sum_sq": _zeros((), device), "rows": _zeros((), device)}


def sae_sums(device: torch.device) -> dict[str, Tensor]:
    return {k: _zeros((), device) for k in SAE_KEYS}


def add_input(acc: dict[str, Tensor], x: Tensor, x_sum: Tensor) -> None:
    """Adds the batch x [B, d_in] (with its float64 column sums x_sum [d_in])."""
    acc["sum"] += x_sum
    acc["sum_sq"] += x.pow(2).sum(dtype=torch.float64)
    acc["rows"] += x.shape[0]


def add_step(acc: dict[str, Tensor], step_metrics: dict[str, Tensor]) -> None:
    """Adds one step's float64 scalars (sse, l0, loss, loss_<term>) and counts the step."""
    for k, v in step_metrics.items():
        acc[k] = acc.get(k, torch.zeros((), dtype=torch.float64, device=v.device)) + v
    acc["steps"] += 1


def reduce_sums(
    input_acc: dict[str, Tensor], accs: list[dict[str, Tensor]], all_reduce
) -> list[dict[str, float]]:
    """One all-reduce of every sum; returns per SAE {"loss", "l0", "loss_<term>", ..., "fvu"} (fvu None on
    degenerate input: one row, or zero variance)."""
    keys = [sorted(acc) for acc in accs]
    flat = torch.cat(
        [input_acc["sum"], input_acc["sum_sq"].view(1), input_acc["rows"].view(1)]
        + [torch.stack([acc[k] for k in ks]) for acc, ks in zip(accs, keys, strict=True)]
    )
    flat = all_reduce(flat).cpu()
    d = input_acc["sum"].numel()
    total_sq = centred_sum_sq(float(flat[d]), float(flat[:d].pow(2).sum()), float(flat[d + 1]))
    offset, out = d + 2, []
    for ks in keys:
        vals = dict(zip(ks, flat[offset : offset + len(ks)].tolist(), strict=True))
        offset += len(ks)
        n = vals.pop("steps")
        sse = vals.pop("sse")
        metrics = {k: v / n for k, v in vals.items()}
        metrics["fvu"] = None if total_sq is None else sse / total_sq
        out.append(metrics)
    return out


def step_metrics(out, y: Tensor) -> dict[str, Tensor]:
    """One SAE's step as float64 scalars (sse against y [B, d], l0, loss, loss_<term>) plus its fired counts."""
    terms = {f"loss_{k}": v.detach().to(torch.float64) for k, v in out.losses.items()}
    return {
        "fired": out.fired.detach(),
        "l0": out.l0.detach(),
        "sse": (out.x_hat.detach() - y).pow(2).sum(dtype=torch.float64),
        **terms,
        "loss": out.loss.detach().to(torch.float64),
    }


def scalar_extras(extras: dict[str, Tensor]) -> dict[str, float]:
    """The last step output's one-number extras (lambda, a threshold) for the record (one device sync per
    record, none per step); per-latent ones are left out."""
    return {k: float(v) for k, v in extras.items() if v.numel() == 1}
