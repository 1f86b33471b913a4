"""Default learning rates and warm-up lengths of the training architectures, each with the measurement or the
paper it comes from (docs/architectures.md, "Defaults and the measurements that chose them")."""

from __future__ import annotations

import math


def capped(paper_steps: int, total_steps: int, fraction: float) -> int:
    """A warm-up length from a paper (in steps of runs of billions of tokens), capped at a fraction of short runs."""
    return min(paper_steps, int(total_steps * fraction))


def scaled_lr(d_sae: int) -> float:
    """Gao et al. 2024 (arXiv 2406.04093): lr 2e-4 at 2^14 latents, scaled by 1 / sqrt(d_sae / 2^14)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def topk_lr(d_sae: int) -> float:
    """TopK: 2e-3 at 2^14 latents (ten times Gao et al.'s rule), scaled as theirs: 3.3e-3 at 6144, 1.1e-2 at 512.

    Gao's rate is for runs of billions of tokens; in the paired harness's runs (docs/architectures.md, "Defaults
    and the measurements that chose them") it left TopK far from converged: MiniLM layer 3, 147 steps, held-out
    FVU 0.298 (x10: 0.139, 3.3% dead; x12: 0.137, 8.7% dead; x24: 52% dead); toy, 1200 steps, MMCS 0.913
    (x10: 0.968). At 586 steps on MiniLM x10 leaves 17.9% of latents dead (x1: none; 14.2% with the family's
    5-batch dead criterion). BatchTopK and Matryoshka, the same family, take it too (measured: BatchTopK MiniLM FVU
    0.302 -> 0.139, toy MMCS 0.76 -> 0.89 with the 5-batch criterion; Matryoshka MiniLM 0.330 -> 0.155).
    """
    return 10 * scaled_lr(d_sae)


def penalty_lr(d_sae: int) -> float:
    """Gated and JumpReLU: 3e-3 at 512 latents (the toy of bench/quality.py: Gao's rule there, 1.1e-3, left
    gated at MMCS 0.68 and JumpReLU's L0 far above its target in a 4.9 M-token run), scaled as Gao's rule."""
    return 3e-3 / math.sqrt(d_sae / 512)
