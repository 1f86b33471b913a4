"""The latent-drift figure: each latent's firing frequency on the base store against the compare store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from saeforge.report.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLOURS = {"kept": "#8a8a8a", "appeared": "#2e7d32", "vanished": "#b03a2e"}


def drift_figure(
    freq_base: np.ndarray, freq_compare: np.ndarray, status: np.ndarray, floor: float, title: str = ""
) -> Figure:
    """Log-log scatter of [d_sae] frequencies (base on x, compare on y), latents coloured by drift status
    ("kept", "appeared", "vanished"); a latent that never fired on one side is drawn at half the floor."""
    fb, fc = np.asarray(freq_base, dtype=np.float64), np.asarray(freq_compare, dtype=np.float64)
    status = np.asarray(status)
    low = floor / 2
    fig, ax = pyplot().subplots(figsize=(5, 4.5), dpi=100)
    for name, colour in _COLOURS.items():
        mask = status == name
        if mask.any():
            ax.scatter(
                np.maximum(fb[mask], low),
                np.maximum(fc[mask], low),
                s=6,
                color=colour,
                label=f"{name} ({int(mask.sum())})",
            )
    top = max(float(fb.max(initial=floor)), float(fc.max(initial=floor)), floor) * 2
    ax.plot([low, top], [low, top], color="black", linewidth=0.6)
    ax.axvline(floor, color="#555", linestyle=":", linewidth=0.8)
    ax.axhline(floor, color="#555", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frequency on the base store")
    ax.set_ylabel("frequency on the compare store")
    ax.set_title(f"latent drift {title}".strip(), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
