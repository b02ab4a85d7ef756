"""The figure of ``torchmf identify``: the terms with their inclusion probabilities, and the identified
model re-simulated from the data's first frame against the observed densities (marginals along x1).

The re-simulation uses at most ``particles`` particles of the first experiment's first frame and
the grid backend of :meth:`.model.WSINDyModel.simulate`; where it leaves the finite numbers
(a wrong model can blow up) the figure says so and shows the observed densities alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import Trajectories
from ..plots import plt, save_figure
from .model import WSINDyModel

__all__ = ["identification_figure"]


def identification_figure(path, model: WSINDyModel, data: Trajectories, particles: int = 400, seed: int = 0,
                          progress: bool = False, length_unit: str = "length units",
                          time_unit: str = "time units") -> Path:
    """Write the PNG at ``path``: a bar panel of terms and two density panels (middle and last time)."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    _terms_panel(axes[0], model)
    observed = _first_experiment(data)
    times = data.times.double().cpu()
    start = observed[0][: particles]
    finished = None
    note = ""
    try:
        step = float(times[1] - times[0])  # one Euler step a frame: a picture, not a benchmark
        run = model.simulate(start.unsqueeze(0).to(model.coefficients.dtype), times, dt=step, seed=seed,
                             progress=progress)
        finished = run.positions[0]
        if not bool(torch.isfinite(finished).all()):
            finished, note = None, " (re-simulation left the finite numbers: the model is not usable)"
    except (ValueError, RuntimeError) as error:  # a model that cannot be simulated is shown as such
        note = f" (re-simulation failed: {str(error)[:60]})"
    for axis, index in zip(axes[1:], (len(times) // 2, len(times) - 1)):
        _density_panel(axis, observed[index][:, 0], None if finished is None else finished[index][:, 0],
                       float(times[index]), length_unit, time_unit)
    verdict = model.info.get("reliable")
    status = "" if verdict is None else (" -- reliable" if verdict else " -- NOT reliable")
    figure.suptitle(f"WSINDy: identified terms and densities{status}{note}", fontsize=10)
    return save_figure(figure, path)


def _first_experiment(data: Trajectories):
    """List over times of the observed positions ``(n_t, d)`` of experiment 0 (missing entries dropped)."""
    positions = data.positions[0].double().cpu()
    if data.mask is None:
        return list(positions)
    mask = data.mask[0].cpu()
    return [positions[t][mask[t]] for t in range(positions.shape[0])]


def _terms_panel(axis, model: WSINDyModel) -> None:
    names = model.library.names
    probabilities = model.info.get("inclusion_probabilities") or {}
    shown = [n for n in names if n in model.selected or probabilities.get(n, 0) > 0]
    values = [probabilities.get(n, 1.0 if n in model.selected else 0.0) for n in shown]
    colours = ["tab:blue" if n in model.selected else "tab:gray" for n in shown]
    axis.barh(range(len(shown)), values, color=colours)
    axis.set_yticks(range(len(shown)), [f"{n} = {model.selected[n]:+.3g}" if n in model.selected else n
                                        for n in shown], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.05)
    axis.set_xlabel("inclusion probability (row resamples)" if probabilities else "selected")
    axis.set_title("terms (blue: selected, with coefficient)", fontsize=9)


def _density_panel(axis, observed: torch.Tensor, fitted, time: float, length_unit: str, time_unit: str) -> None:
    low, high = float(observed.min()), float(observed.max())
    if fitted is not None:
        low, high = min(low, float(fitted.min())), max(high, float(fitted.max()))
    edges = np.linspace(low, high + 1e-12, 61)
    axis.hist(observed.numpy(), bins=edges, density=True, alpha=0.5, label="observed")
    if fitted is not None:
        axis.hist(fitted.numpy(), bins=edges, density=True, histtype="step", linewidth=1.5,
                  label="identified model, re-simulated")
    axis.set_xlabel(f"x1 ({length_unit})")
    axis.set_ylabel(f"density (1 / {length_unit})")
    axis.set_title(f"t = {time:.3g} {time_unit}", fontsize=9)
    axis.legend(fontsize=7)
