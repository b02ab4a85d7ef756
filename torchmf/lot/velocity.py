r"""LOT velocity at the central snapshot of a window, and the particle-wise baseline.

- :func:`lot_method`: the transport backend LOT uses for a ``method`` name.
- :func:`lot_velocity`: the velocity at the central snapshot from transport maps to the others:
  by default the noise-aware regression of :mod:`torchmf.lot.estimate` (a least-squares slope over
  the lags, smoothed in space, with its error bar: :func:`lot_velocity_estimate`), or
  ``estimator="centred-average"``, the average of ``k`` centred differences of the LOT paper's
  section 5.2, verbatim; also for windows with missing particles.
- :func:`particle_velocity`: each particle's own centred differences (section 6.2).

Shapes: snapshots ``(2k+1, N, d)`` (or ``2k+1`` clouds ``(N_j, d)`` with missing particles);
velocities ``(N, d)``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int, check_points, check_positive, check_tensor
from ..transport import METHODS, TransportSolver, resolve_method
from .estimate import VelocityEstimate, estimate_velocity

#: the velocity estimators of :func:`lot_velocity`
ESTIMATORS = ("regression", "centred-average")


def lot_method(method: str, n: int, dim: int, weighted: bool = False) -> str:
    """The transport backend LOT uses for ``method``: ``"auto"`` means sorting in 1-D, the exact
    assignment up to ``n = 30,000`` (the certified sparse assignment; 3,000 for frames of unequal
    counts, by POT's network simplex) and the converged Sinkhorn beyond
    (:func:`torchmf.transport.resolve_method`). Measured on untracked clouds moved by known gradient
    fields (N = 1,000, scripts/bench_transport.py): exact maps 0.03% off the true velocity, converged
    Sinkhorn maps at the default blur 3.6% (the blur smooths the map), and the assignment is the
    faster of the two at these sizes."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, but got {method!r}")
    if method != "auto":
        return method
    return resolve_method("auto", n, dim, weighted=weighted)


def _check_window(snapshots, k):
    snapshots = check_points("snapshots", snapshots)
    if snapshots.ndim != 3:
        raise ValueError(f"snapshots: expected shape (2k+1, N, d), but got {tuple(snapshots.shape)}")
    return snapshots, _half_width(snapshots.shape[0], k)


def _half_width(count, k):
    """``k`` of a window of ``count = 2k+1`` snapshots (checked, or read off when ``None``)."""
    if k is None:
        if count < 3 or count % 2 == 0:
            raise ValueError(f"snapshots: expected an odd number >= 3 of snapshots (2k+1), but got {count}")
        k = (count - 1) // 2
    k = check_int("k", k, minimum=1)
    if count != 2 * k + 1:
        raise ValueError(f"k: k = {k} needs 2k+1 = {2 * k + 1} snapshots, but got {count} snapshots")
    return k


def _cloud_window(snapshots, k, mask):
    """A window of clouds with different particle counts: ``([(N_j, d)] * (2k+1), k)`` from a
    sequence of clouds, or from ``snapshots (2k+1, N, d)`` and ``mask (2k+1, N)`` (True = observed;
    the other entries, NaN or not, are left out)."""
    if isinstance(snapshots, (list, tuple)):
        if mask is not None:
            raise ValueError("mask: a sequence of clouds already has its own counts; pass either a sequence of "
                             "(N_j, d) clouds or a (2k+1, N, d) tensor with a mask, but got both")
        clouds = [check_points(f"snapshots[{j}]", cloud) for j, cloud in enumerate(snapshots)]
    else:
        snapshots = check_tensor("snapshots", snapshots, ndim=3, finite=False)
        mask = torch.as_tensor(mask, device=snapshots.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(snapshots.shape[:2]):
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(snapshots.shape[:2])} (snapshots "
                             f"without d), but got {mask.dtype} {tuple(mask.shape)}")
        clouds = [check_points(f"snapshots[{j}][mask[{j}]]", frame[observed])
                  for j, (frame, observed) in enumerate(zip(snapshots, mask))]
    first = clouds[0]
    for j, cloud in enumerate(clouds):
        if cloud.shape[-1] != first.shape[-1] or cloud.ndim != 2 or cloud.dtype != first.dtype \
                or cloud.device != first.device:
            raise ValueError(f"snapshots[{j}]: expected an (N_j, {first.shape[-1]}) cloud of dtype {first.dtype} "
                             f"on {first.device} like snapshots[0], but got {tuple(cloud.shape)} {cloud.dtype} "
                             f"{cloud.device}")
    return clouds, _half_width(len(clouds), k)


def lot_velocity(snapshots: torch.Tensor, dt: float, k: Optional[int] = None, method: str = "auto",
                 blur: Optional[float] = None, solver: Optional[TransportSolver] = None,
                 return_second_derivative: bool = False, mask: Optional[torch.Tensor] = None,
                 estimator: str = "regression", lags: int = 10, smoothing="auto"):
    r"""LOT velocity at the central snapshot of a window.

    ``estimator="regression"`` (default): the least-squares slope of the transport displacements
    over ``lags`` lags spread over the window, smoothed in space with a bandwidth chosen from the
    data (:mod:`torchmf.lot.estimate`; :func:`lot_velocity_estimate` also returns its standard
    error). Measured on box diffusion (clean step from the exact law at t = 155, k = 80, N = 1,000 -
    4,000): velocity error 0.18-0.99x the true speed, against 2.3-3.2x for the section 5.2 average.
    ``estimator="centred-average"``: the paper's
    :math:`v(x_i) = \frac1k \sum_{j=1}^k \frac{T^{+j}(x_i) - T^{-j}(x_i)}{2 j h}` (all ``2k`` maps).

    Snapshots with missing particles (``mask``, or a sequence of clouds of different sizes) are
    used as they are: every frame is the uniform measure on its observed particles, and the maps
    go from the central frame's observed particles to each frame's (transport between clouds of
    unequal size, :func:`torchmf.transport.transport_map`). These solves start cold: a warm start
    needs the same particle labels in consecutive frames.

    Arguments:
        snapshots: ``(2k+1, N, d)`` clouds at times :math:`t_0 - kh, \dots, t_0 + kh`, or a
            sequence of ``2k+1`` clouds ``(N_j, d)`` of any sizes.
        dt: the spacing ``h`` between snapshots.
        k: half-width (default ``(L-1)/2``).
        method: transport backend (see :func:`lot_method`; any :data:`torchmf.transport.METHODS`).
        blur: Sinkhorn blur (default: the transport module's).
        solver: a :class:`~torchmf.transport.TransportSolver` to reuse (overrides method/blur).
        return_second_derivative: also return the least-squares second derivative of the LOT
            curve :math:`s \mapsto T^{\mu_{t_0+s}}_{\mu_{t_0}}` at :math:`s = 0`, ``(N, d)``.
        mask: ``(2k+1, N)`` bool, True where a particle was observed (e.g. a window of
            :attr:`torchmf.Trajectories.mask`); the other entries of ``snapshots`` may be NaN.
        estimator: ``"regression"`` or ``"centred-average"`` (above).
        lags, smoothing: of the regression (:func:`torchmf.lot.estimate.estimate_velocity`):
            positive lags used, and ``"auto"`` / ``None`` / a bandwidth in length units.

    Returns:
        velocity ``(N, d)`` at the particles of ``snapshots[k]`` (and the second derivative); with
        missing particles ``(N_k, d)`` at the observed particles of the central frame, in their
        order (``snapshots[k][mask[k]]``).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {list(ESTIMATORS)}, but got {estimator!r}")
    if estimator == "regression":
        # the velocity alone: the error bar's split-half check would only cost transport solves
        estimate = lot_velocity_estimate(snapshots, dt, k, method, blur, solver, mask, lags, smoothing,
                                         error="noise-copy")
        return (estimate.velocity, estimate.second_derivative) if return_second_derivative else estimate.velocity
    snapshots, k, warm = _window(snapshots, k, mask)
    dt = check_positive("dt", dt)
    centre = snapshots[k]
    solver = _solver(snapshots, method, blur) if solver is None else solver
    solver.reset()
    maps = {}
    for j in list(range(-k, 0)) + list(range(1, k + 1)):  # consecutive targets: warm starts help
        maps[j] = solver(centre, snapshots[k + j], warm_start=warm)
    velocity = sum((maps[j] - maps[-j]) / (2 * j * dt) for j in range(1, k + 1)) / k
    if not return_second_derivative:
        return velocity
    lags = [j * dt for j in range(1, k + 1)]
    even = [0.5 * (maps[j] + maps[-j]) - centre for j in range(1, k + 1)]
    # even part of the curve: e_j = a s_j^2 / 2, least squares over j
    second = 2 * sum(s ** 2 * e for s, e in zip(lags, even)) / sum(s ** 4 for s in lags)
    return velocity, second


def lot_velocity_estimate(snapshots, dt: float, k: Optional[int] = None, method: str = "auto",
                          blur: Optional[float] = None, solver: Optional[TransportSolver] = None,
                          mask: Optional[torch.Tensor] = None, lags: int = 10,
                          smoothing="auto", error: str = "max") -> VelocityEstimate:
    """The regression LOT velocity with its error bar: a
    :class:`~torchmf.lot.estimate.VelocityEstimate` (``velocity``, ``standard_error``, ``speed``,
    ``significant``, ``bandwidth``, ...). Arguments as :func:`lot_velocity`; ``error``: how the
    error bar is estimated (:mod:`torchmf.lot.estimate`, items 4-5): ``"max"`` (default) of the
    noise copy and the split-half estimate, which also holds when particles move persistently."""
    snapshots, k, warm = _window(snapshots, k, mask)
    dt = check_positive("dt", dt)
    solver = _solver(snapshots, method, blur) if solver is None else solver
    return estimate_velocity(snapshots, dt, k, lags=lags, smoothing=smoothing, solver=solver, warm_start=warm,
                             error=error)


def _window(snapshots, k, mask):
    """``(clouds, k, warm)``: the checked window; warm starts only for one labelled tensor."""
    if mask is not None or isinstance(snapshots, (list, tuple)):
        clouds, k = _cloud_window(snapshots, k, mask)
        return clouds, k, False
    snapshots, k = _check_window(snapshots, k)
    return snapshots, k, True


def _solver(snapshots, method, blur):
    # the self-transport debiasing cancels in a difference of maps from one source
    sizes = {cloud.shape[0] for cloud in snapshots}
    return TransportSolver(lot_method(method, max(sizes), snapshots[0].shape[1], weighted=len(sizes) > 1),
                           blur=blur, debias=False)


def particle_velocity(snapshots: torch.Tensor, dt: float, k: Optional[int] = None) -> torch.Tensor:
    r"""Particle-wise baseline (section 6.2): :math:`\frac1k\sum_j (x_i(t_0+jh) - x_i(t_0-jh))/(2jh)`,
    ``(2k+1, N, d) -> (N, d)``; no relabelling, so only meaningful for tracked particles."""
    snapshots, k = _check_window(snapshots, k)
    dt = check_positive("dt", dt)
    return sum((snapshots[k + j] - snapshots[k - j]) / (2 * j * dt) for j in range(1, k + 1)) / k
