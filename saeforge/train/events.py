"""What the training loop hands its callbacks: `ProgressEvent` (main rank, after each step's logging) and
`StepEvent` (every rank, right after each optimiser step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ProgressEvent:
    """Passed to the `progress` callback after every step (main rank only).

    start_step: the step this process started from (non-zero after a resume).
    metrics: per SAE name, the metrics of the record logged at this step (None on steps without a record).
    """

    step: int
    total_steps: int
    start_step: int
    tokens: int
    total_tokens: int
    tokens_per_s: float
    metrics: dict[str, dict[str, float]] | None = None


@dataclass
class StepEvent:
    """Passed to the `on_step` callback after every optimiser step, before that step's logging (every rank).

    step: optimiser steps taken so far (1 after the first). x: [B / world_size, d_in] the batch the SAEs
    trained on, already scaled. saes: per SAE name, its training module (weights as just updated).
    """

    step: int
    x: Tensor
    saes: dict[str, torch.nn.Module]
