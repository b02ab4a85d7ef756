"""Fitting and scoring helpers of the averaged dynamics: :func:`fit_fast_law` (the fast law
:math:`q_\\phi` alone, by reverse KL to the system's known unnormalized fast law) and
:func:`drift_error` (relative L2 error against the true averaged drift)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .._validation import check_int, check_positive
from .fast_slow_system import fast_system

if TYPE_CHECKING:
    from .drift import FlowAveragedDrift

__all__ = ["fit_fast_law", "drift_error"]


def fit_fast_law(model: "FlowAveragedDrift", steps: int, n_points: int = 128, learning_rate: float = 5e-3,
                 temperature: float = 3.0, seed: int = 0, progress: bool = False) -> float:
    """Fit ``model``'s fast law :math:`q_\\phi(y|x)` alone (no data) by :meth:`FlowAveragedDrift.fast_law_divergence`.

    ``steps`` Adam steps (cosine decay to 5%) on ``n_points`` stratified points per step over the
    model's penalty range (call ``set_data_range`` first); the target is tempered, ``temperature``
    times ``tau^2`` at step 0 down to ``tau^2`` at half the steps, so that the flow starts broad over
    every mode and then sharpens instead of locking into one well. Only the density's parameters
    move. Returns the last divergence value.
    """
    from tqdm.auto import tqdm

    steps = check_int("steps", steps, minimum=1)
    temperature = check_positive("temperature", temperature)
    parameters = list(model.density.parameters())
    optimizer = torch.optim.Adam(parameters, lr=check_positive("learning_rate", learning_rate))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=0.05 * learning_rate)
    generator = torch.Generator(device=model.data_range.device).manual_seed(seed)
    value = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in tqdm(range(steps), desc="fast law", disable=not progress):
            model.penalty_temperature = 1.0 + (temperature - 1.0) * max(0.0, 1.0 - step / (0.5 * steps))
            loss = model.fast_law_divergence(model.penalty_points(n_points, generator))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"loss: the fast-law divergence became {value} at step {step}")
    model.penalty_temperature = 1.0
    return value


def drift_error(model, system=None, n_points: int = 200, n_samples: int = 4096, seed: int = 0) -> float:
    """Relative L2 error of ``model.drift`` against the true averaged drift on the model's 5-95% quantile grid."""
    from ..metrics import relative_error

    system = fast_system(system if system is not None else model.system)
    with torch.no_grad():
        grid = model.quantile_grid(n_points)
        generator = torch.Generator(device=grid.device).manual_seed(seed)
        kwargs = {"n_samples": n_samples, "generator": generator} if hasattr(model, "sample_fast") else {}
        estimate = model.drift(grid, **kwargs)
        truth = system.averaged_drift(grid.double()).to(estimate)
    return float(relative_error(estimate.double(), truth.double()))
