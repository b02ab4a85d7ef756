"""Figures of the averaged dynamics (used by scripts/reproduce_averaging.py and the report)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from ..plots import _numpy, plt, save_figure

__all__ = ["drift_band_plot", "fast_law_plot", "posterior_pairs_plot"]


def drift_band_plot(path, x, truth, curves: Dict[str, object], band=None, title: str = ""):
    """Averaged drift ``F(x)`` against the truth; ``band = (lower, upper)`` shaded (credible band).

    ``x``, ``truth`` and each curve are ``(B,)`` (one slow dimension)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    x = _numpy(x).reshape(-1)
    if band is not None:
        axis.fill_between(x, _numpy(band[0]).reshape(-1), _numpy(band[1]).reshape(-1), alpha=0.3,
                          label="90% credible band")
    axis.plot(x, _numpy(truth).reshape(-1), "k-", lw=2, label="true averaged drift")
    for label, values in curves.items():
        axis.plot(x, _numpy(values).reshape(-1), "--", label=label)
    axis.set_xlabel("x")
    axis.set_ylabel("F(x)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def fast_law_plot(path, points: Sequence[float], grid, densities, samples: Dict[str, object], title: str = ""):
    """Per ``x`` in ``points``: the true density ``densities[i] (G,)`` on ``grid (G,)`` and
    histograms of each model's samples ``samples[name][i] (S,)``."""
    figure, axes = plt.subplots(1, len(points), figsize=(3.4 * len(points), 3.2), squeeze=False)
    grid = _numpy(grid)
    for index, (axis, point) in enumerate(zip(axes[0], points)):
        axis.plot(grid, _numpy(densities[index]), "k-", lw=2, label="true rho_x")
        for name, values in samples.items():
            axis.hist(_numpy(values[index]).reshape(-1), bins=80, range=(grid.min(), grid.max()), density=True,
                      histtype="step", label=name)
        axis.set_title(f"x = {float(point):.2f}")
        axis.set_xlabel("y")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    return save_figure(figure, path)


def posterior_pairs_plot(path, samples, names: Sequence[str], truth: Optional[Sequence[float]] = None,
                         title: str = ""):
    """Pairs plot of posterior samples ``(S, P)``: histograms on the diagonal, scatter below."""
    samples = _numpy(samples)
    count = samples.shape[1]
    figure, axes = plt.subplots(count, count, figsize=(2.4 * count, 2.4 * count), squeeze=False)
    for row in range(count):
        for column in range(count):
            axis = axes[row][column]
            if row == column:
                axis.hist(samples[:, row], bins=40, color="tab:blue", alpha=0.7)
                if truth is not None:
                    axis.axvline(truth[row], color="k")
            elif row > column:
                axis.scatter(samples[:, column], samples[:, row], s=2, alpha=0.3)
                if truth is not None:
                    axis.plot(truth[column], truth[row], "k+", ms=12, mew=2)
            else:
                axis.axis("off")
            if row == count - 1:
                axis.set_xlabel(names[column])
            if column == 0 and row > 0:
                axis.set_ylabel(names[row])
    figure.suptitle(title)
    return save_figure(figure, path)
