"""Every figure saeforge draws, from plain values: an evaluation's latent-density histogram and L0 Pareto plots,
training curves. matplotlib runs on its Agg backend (no display), selected once in `pyplot()`."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saeforge.atomic import write_bytes, write_with

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def density_histogram_figure(density: np.ndarray, title: str = "", dead_floor: float | None = None) -> Figure:
    """Histogram of log10 latent density ([d_sae] fractions of tokens); dead latents counted apart."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    fig, ax = pyplot().subplots(figsize=(6, 3.2), dpi=100)
    if alive.size:
        ax.hist(np.log10(alive), bins=50, color="#3b6ea5")
    if dead_floor is not None:
        ax.axvline(np.log10(dead_floor), color="#b03a2e", linestyle="--", label="dead-detection floor")
        ax.legend(loc="upper left", fontsize=8)
    dead = int((density == 0).sum())
    ax.set_xlabel("log10 latent density (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}  ({dead} of {density.size} latents never fired)".strip(), fontsize=9)
    fig.tight_layout()
    return fig


def density_histogram_png(
    density: np.ndarray, path: str | Path, title: str = "", dead_floor: float | None = None
) -> Path:
    """Writes the log10 latent-density histogram of [d_sae] densities to `path` (PNG); returns the path."""
    return save_png(density_histogram_figure(density, title, dead_floor), path)


def pareto_front(x: Sequence[float], y: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices of the points not dominated in (lower x, better y), ordered by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i] if higher_is_better else y[i]))
    front, best = [], None
    for i in order:
        better = best is None or (y[i] > best if higher_is_better else y[i] < best)
        if better:
            front.append(i)
            best = y[i]
    return front


def pareto_figure(results: Sequence[Mapping[str, Any]], y_key: str, higher_is_better: bool) -> Figure | None:
    """Scatter of l0 against `y_key` (e.g. fvu, ce_loss_score), Pareto front drawn; None if nothing to plot."""
    pts = [(r["l0"], r[y_key], r.get("name", "")) for r in results if r.get(y_key) is not None]
    if not pts:
        return None
    x, y, names = zip(*pts, strict=True)
    fig, ax = pyplot().subplots(figsize=(5.5, 3.8), dpi=100)
    ax.scatter(x, y, color="#3b6ea5", zorder=3)
    front = pareto_front(x, y, higher_is_better)
    front_x, front_y = [x[i] for i in front], [y[i] for i in front]
    ax.plot(
        front_x,
        front_y,
        color="#b03a2e",
        linewidth=1,
        marker="o",
        markerfacecolor="none",
        markersize=10,
        label="Pareto front",
    )
    for xi, yi, name in pts:
        ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log" if min(x) > 0 else "linear")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(y_key)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_png_bytes(fig: Figure) -> bytes:
    """PNG bytes of a figure (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Writes the figure as PNG atomically (temp file + os.replace) and closes it."""
    return write_bytes(path, figure_png_bytes(fig))


# Training curves: one panel per metric of a record, one line per SAE.
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
    plt = pyplot()
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
