r"""The micro window of one projective cycle: sampled, its velocity estimated, and grown while the
estimate is too noisy for the step about to be taken.

:func:`sampling_floor` estimates, from one cloud, the W2 between two independent samples of its
law of the same size: the W2 between two random halves of the cloud over :math:`\sqrt2` (in
:math:`d \ge 2` the empirical W2 scales as :math:`n^{-1/2}` up to logarithms, and two halves hold
half the points each). :func:`sample_window` runs ``2k`` micro steps, estimates the velocity at the
centre, and while ``H * standard_error > error_fraction * floor`` and the doubled window fits in
``max_k``, runs ``2k`` more (the centre moves forward by ``k``) and estimates again: the window
length comes from the data's own signal-to-noise within the micro-step budget.

Shapes: windows ``(2k+1, N, d)``; velocities ``(N, d)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._validation import check_points
from ..metrics import w2
from .estimate import VelocityEstimate
from .velocity import lot_velocity, lot_velocity_estimate, particle_velocity

__all__ = ["sampling_floor", "sample_window", "Window"]


def sampling_floor(cloud: torch.Tensor, seed: int = 0) -> float:
    """W2 between two independent samples of ``cloud``'s law of ``N`` points each, estimated from
    two random halves of ``cloud (N, d)`` (module docstring); deterministic for a given ``seed``."""
    cloud = check_points("cloud", cloud)
    if cloud.ndim != 2 or cloud.shape[0] < 4:
        raise ValueError(f"cloud: expected shape (N, d) with N >= 4 (two halves of two points), "
                         f"but got {tuple(cloud.shape)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(cloud.shape[0], generator=generator).to(cloud.device)
    half = cloud.shape[0] // 2
    return float(w2(cloud[order[:half]], cloud[order[half:2 * half]])) / math.sqrt(2.0)


@dataclass
class Window:
    """One sampled window: ``snapshots (2k+1, N, d)``, its half width ``k``, the simulator state at
    the centre, the velocity ``(N, d)``, the second-derivative RMS ``curvature``, the regression
    ``estimate`` (None for the other estimators) and the ``floor`` estimate (NaN when not needed)."""

    snapshots: torch.Tensor
    k: int
    centre_state: object
    velocity: torch.Tensor
    curvature: float
    estimate: Optional[VelocityEstimate]
    floor: float


def sample_window(integrator, simulator, recorder, clock: int, dt: float, step_length: float,
                  room: Optional[int] = None) -> Window:
    """Sample (and grow) the window of one cycle starting at micro step ``clock`` (module docstring);
    ``room``: the most micro steps the window may use. Records the centre in ``recorder``."""
    snapshots, states = [simulator.positions().clone()], {}
    half = integrator.k
    _advance(integrator, simulator, recorder, clock, snapshots, states, 2 * half)
    while True:
        window = torch.stack(snapshots)
        velocity, curvature, estimate = _velocity(integrator, window, dt, half)
        floor = float("nan")
        if estimate is None:
            break
        floor = sampling_floor(window[half]) if window.shape[1] >= 4 else float("nan")
        longer = 2 * half <= integrator.max_k and (room is None or 4 * half <= room) \
            and 2 * half * dt < step_length
        if not longer or step_length * estimate.standard_error <= integrator.error_fraction * floor:
            break
        _advance(integrator, simulator, recorder, clock, snapshots, states, 2 * half)
        half *= 2
    recorder.insert(clock + half, window[half], "centre")
    recorder.count(2 * half)
    return Window(window, half, states[half], velocity, curvature, estimate, floor)


def _advance(integrator, simulator, recorder, clock, snapshots, states, steps):
    """``steps`` more micro steps appended to ``snapshots``; states kept where a centre may fall (k 2^m)."""
    for _ in range(steps):
        simulator.step(1)
        snapshots.append(simulator.positions().clone())
        j = len(snapshots) - 1
        if j % integrator.k == 0 and _power_of_two(j // integrator.k):
            states[j] = _copy_state(simulator.state)
        if integrator.record_every and j % integrator.record_every == 0:
            recorder.record(clock + j, "window")
    sizes = {tuple(cloud.shape) for cloud in snapshots}
    if len(sizes) > 1:
        # the Euler step re-initialises the simulator's own particles: a changing set has no meaning here
        raise ValueError(f"simulator: positions() changed shape within a window ({sorted(sizes)}); the projective "
                         f"integrator moves a fixed set of particles -- for recorded frames with lost particles "
                         f"use torchmf.lot.extrapolate(trajectories) or lot_velocity(..., mask=)")


def _velocity(integrator, window, dt, half):
    if integrator.method == "particle":
        return particle_velocity(window, dt, half), float("nan"), None
    if integrator.estimator == "centred-average":
        velocity, second = lot_velocity(window, dt, half, method=integrator.method, blur=integrator.blur,
                                        return_second_derivative=True, estimator="centred-average")
        return velocity, float(second.pow(2).sum(-1).mean().sqrt()), None
    estimate = lot_velocity_estimate(window, dt, half, method=integrator.method, blur=integrator.blur,
                                     lags=integrator.lags, smoothing=integrator.smoothing, error=integrator.error)
    curvature = float(estimate.second_derivative.pow(2).sum(-1).mean().sqrt())
    return estimate.velocity, curvature, estimate


def _power_of_two(value):
    return value >= 1 and value & (value - 1) == 0


def _copy_state(state):
    """A detached copy of a simulator state (tensors cloned, containers copied)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    return copy.deepcopy(state)
