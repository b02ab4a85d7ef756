"""The figure of ``torchmf nudge`` on the user's data: the misfit over time of every nudged run and of
the un-nudged model (held-out frames shaded), and for 2-D data the observed, nudged and un-nudged
densities at the last frame."""
from __future__ import annotations

from pathlib import Path

__all__ = ["own_data_figure"]


def own_data_figure(path, runs: dict, misfits: dict, observations, bandwidth: float, assimilated: int,
                    units: dict) -> Path:
    """Write the PNG at ``path``; ``runs`` label -> Trajectories ``(1, L, N, d)``, ``misfits`` label -> ``(L,)``."""
    import numpy as np

    from ..plots import plt, save_figure

    times = observations.times.numpy()
    time_unit = units["time"]["unit"] or "data time unit"
    length_unit = units["length"]["unit"] or "data length unit"
    panels = _densities(runs, observations, bandwidth) if observations.dim == 2 else {}
    figure, axes = plt.subplots(1, 1 + len(panels), figsize=(4.4 + 3.2 * len(panels), 3.6), squeeze=False,
                                layout="constrained")
    axis = axes[0, 0]
    for label, values in misfits.items():
        axis.plot(times, values, "k--" if label == "un-nudged" else "-o", markersize=3, label=label)
    if assimilated < len(times):
        axis.axvspan(times[assimilated - 1], times[-1], color="0.85", label="held out (not assimilated)")
    axis.set_xlabel(f"t ({time_unit})")
    axis.set_ylabel("misfit to the observations")
    axis.set_yscale("log")
    axis.legend(fontsize=7)
    axis.set_title("misfit over time", fontsize=9)
    if panels:
        vmax = max(float(np.max(v)) for v, _ in panels.values())
        for index, (axis, (label, (values, extent))) in enumerate(zip(axes[0, 1:], panels.items())):
            shown = axis.imshow(values.T, origin="lower", extent=extent, vmin=0, vmax=vmax, cmap="viridis")
            axis.set_title(label, fontsize=9)
            axis.set_xlabel(f"x ({length_unit})")
            axis.set_ylabel(f"y ({length_unit})" if index == 0 else " ")
        figure.colorbar(shown, ax=axes[0, 1:].tolist(), shrink=0.8, label=f"density (1 / {length_unit}^2)")
    figure.suptitle(f"nudging at t = {times[-1]:g} ({time_unit})", fontsize=10)
    return save_figure(figure, path)


def _densities(runs, observations, bandwidth):
    """label -> (density (G_x, G_y) at the last frame, imshow extent): observed, first nudged, un-nudged."""
    import torch

    from ..grid import Grid
    from ..metrics import smoothed_density

    grid = getattr(observations, "grid", None)
    last = {label: run.positions[0, -1].double() for label, run in runs.items()}
    if grid is None:  # particle observations: a grid covering every cloud
        points, _ = observations.sources(observations.n_times - 1)
        grid = Grid.covering(torch.cat([points[0].double()] + list(last.values())), 96)
        observed = smoothed_density(points[0].double(), grid, bandwidth)
    else:
        observed = observations.densities[0, -1].double()
    extent = [grid.lower[0], grid.upper[0], grid.lower[1], grid.upper[1]]
    nudged = next(label for label in runs if label != "un-nudged")
    panels = {"observed (last frame)": observed}
    for label in (nudged, "un-nudged"):
        points = last[label]
        lower, upper = points.new_tensor(grid.lower), points.new_tensor(grid.upper)
        inside = ((points >= lower) & (points <= upper)).all(-1)
        panels[label] = smoothed_density(torch.where(inside.unsqueeze(-1), points, lower), grid, bandwidth,
                                         inside.double() / points.shape[0])
    return {label: (values.cpu().numpy(), extent) for label, values in panels.items()}
