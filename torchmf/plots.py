"""Matplotlib figures used by the CLI, the report and the scripts (Agg backend, atomic PNGs).

Every figure is laid out by matplotlib's constrained layout (titles, suptitles, colour bars and
tick labels never overlap) and every axis carries a label: the model's quantities are
nondimensional, so a label names the quantity and says so, e.g. ``"t (model time units)"``;
side-by-side panels share their y axis and label it once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.files import atomic_path  # noqa: E402

__all__ = ["save_figure", "line_plot", "scatter_panels", "density_panels", "plt"]


def _numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def save_figure(figure, path) -> Path:
    """Write ``figure`` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def _check_labels(**labels) -> None:
    for name, value in labels.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: every figure axis needs a label (with its unit), but got {value!r}")


def line_plot(path, x, series: Dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str = "",
              logy: bool = False, logx: bool = False, styles: Optional[Dict[str, str]] = None) -> Path:
    """One panel of labelled curves sharing ``x`` (or each its own ``(x, y)`` pair)."""
    _check_labels(xlabel=xlabel, ylabel=ylabel)
    figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
    for label, values in series.items():
        if isinstance(values, tuple) and len(values) == 2:
            xs, ys = values
        else:
            xs, ys = x, values
        axis.plot(_numpy(xs), _numpy(ys), (styles or {}).get(label, "-"), label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if logy:
        axis.set_yscale("log")
    if logx:
        axis.set_xscale("log")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def scatter_panels(path, clouds: Dict[str, np.ndarray], title: str = "", limits=None, size: float = 1.0,
                   xlabel: str = "x1 (model length units)", ylabel: str = "x2 (model length units)") -> Path:
    """Side-by-side 2-D scatter plots of particle clouds ``(N, 2)`` (shared axes, one y label)."""
    _check_labels(xlabel=xlabel, ylabel=ylabel)
    figure, axes = plt.subplots(1, len(clouds), figsize=(3.2 * len(clouds), 3.4), squeeze=False, sharex=True,
                                sharey=True, layout="constrained")
    for index, (axis, (label, cloud)) in enumerate(zip(axes[0], clouds.items())):
        cloud = _numpy(cloud)
        axis.scatter(cloud[:, 0], cloud[:, 1], s=size, alpha=0.5, linewidths=0)
        axis.set_title(label, fontsize=9)
        axis.set_aspect("equal")
        axis.set_xlabel(xlabel)
        if index == 0:
            axis.set_ylabel(ylabel)
        if limits is not None:
            axis.set_xlim(*limits[0])
            axis.set_ylim(*limits[1])
    figure.suptitle(title)
    return save_figure(figure, path)


def density_panels(path, images: Dict[str, np.ndarray], extent=None, title: str = "",
                   xlabel: str = "x (model length units)", ylabel: str = "y (model length units)",
                   shared_scale: bool = True, colorbar_label: str = "density (1 / model length units^d)") -> Path:
    """Side-by-side images ``(G_x, G_y)`` (densities on grids, space-time plots), one colour scale if
    shared; the panels share their y axis (one label, no tick labels running into the next panel)."""
    _check_labels(xlabel=xlabel, ylabel=ylabel, colorbar_label=colorbar_label)
    arrays = {k: _numpy(v) for k, v in images.items()}
    vmax = max(float(a.max()) for a in arrays.values()) if shared_scale else None
    figure, axes = plt.subplots(1, len(arrays), figsize=(3.4 * len(arrays) + 0.8, 3.6), squeeze=False,
                                sharey=True, layout="constrained")
    for index, (axis, (label, array)) in enumerate(zip(axes[0], arrays.items())):
        shown = axis.imshow(array.T, origin="lower", extent=extent, aspect="auto", vmin=0 if shared_scale else None,
                            vmax=vmax, cmap="viridis")
        axis.set_title(label, fontsize=9)
        axis.set_xlabel(xlabel)
        if index == 0:
            axis.set_ylabel(ylabel)
    figure.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label=colorbar_label)
    figure.suptitle(title)
    return save_figure(figure, path)
