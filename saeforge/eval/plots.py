"""Figures of an evaluation: the per-latent density histogram and the L0 Pareto plots of several SAEs."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from saeforge.atomic import write_bytes


def density_histogram_figure(density: np.ndarray, title: str = "", dead_floor: float | None = None) -> Figure:
    """Histogram of log10 latent density ([d_sae] fractions of tokens); dead latents counted apart."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
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
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
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
    plt.close(fig)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Writes the figure as PNG atomically (temp file + os.replace) and closes it."""
    return write_bytes(path, figure_png_bytes(fig))
