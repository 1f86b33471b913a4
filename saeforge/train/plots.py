"""Training curves as a PNG (matplotlib, Agg backend): loss, FVU, L0, dead fraction and lr against tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeforge.atomic import write_with

PANELS = (
    ("loss", "loss", True),
    ("fvu", "FVU", True),
    ("l0", "L0", False),
    ("dead_fraction", "dead fraction", False),
    ("lr", "learning rate", False),
)


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Writes one figure with a panel per metric and a line per SAE; returns its path (None if no data)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(history[-1]["saes"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2), constrained_layout=True)
    for ax, (key, title, log) in zip(axes, PANELS, strict=True):
        for name in names:
            pts = [(r["tokens"], r["saes"][name][key]) for r in history if name in r["saes"]]
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=name)
        if log and all(r["saes"][n][key] > 0 for r in history for n in names if n in r["saes"]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
    if len(names) <= 10:
        axes[0].legend(fontsize=7)
    write_with(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return path
