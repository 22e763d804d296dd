"""Figures drawn without pyplot: a `Figure` renders itself to PNG with matplotlib's Agg canvas,
so lensperf never switches pyplot's global backend (inline plots in a notebook keep working)
and never leaves figures open in pyplot's registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np  # noqa: F401 (the axes' array type)
from matplotlib.figure import Figure

from lensperf.atomic import atomic_file


def figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float]) -> tuple[Figure, object]:
    """A figure and its axes (one Axes, or an array of them, as pyplot.subplots gives)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols)


def axes_grid(rows: int, cols: int, *, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure and a 2-D array of axes, whatever the shape."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Lay out and write `fig` as a PNG, whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
