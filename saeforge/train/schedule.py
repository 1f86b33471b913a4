"""Learning-rate and sparsity warm-up schedules: pure functions of the step, so resuming needs only the step.

Steps count from 0; `lr_at(s, ...)` is the learning rate used by optimiser step s of `total_steps`.

    warm-up (s < W):   lr * (s + 1) / W
    constant:          lr
    cosine:            lr * (f + (1 - f) * (1 + cos(pi * p)) / 2),   p = (s - W) / (T - W)
    linear:            lr                      before the last D steps,
                       lr * (1 - (1 - f) * p),  p = (s - (T - D)) / D   during them
"""

from __future__ import annotations

import math

from saeforge.train.defaults import OptimSettings


def lr_at(step: int, total_steps: int, o: OptimSettings) -> float:
    """Learning rate of step `step` (0-based) of `total_steps` under settings `o`."""
    w, f = o.lr_warmup_steps, o.lr_end_fraction
    if step < w:
        return o.lr * (step + 1) / w
    if o.lr_schedule == "cosine":
        span = max(total_steps - w, 1)
        p = min((step - w) / span, 1.0)
        return o.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * p)))
    if o.lr_schedule == "linear":
        decay = min(o.lr_decay_steps, total_steps)
        start = total_steps - decay
        if decay == 0 or step < start:
            return o.lr
        p = min((step - start) / decay, 1.0)
        return o.lr * (1 - (1 - f) * p)
    return o.lr


def sparsity_warmup_at(step: int, warmup_steps: int) -> float:
    """Fraction in (0, 1] of the final sparsity-penalty weight at step `step` (linear warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
