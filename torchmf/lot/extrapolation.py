r"""Extrapolation of recorded snapshots with the LOT velocity (no simulator needed).

Shapes: snapshots ``(L, N, d)``; forecasts ``(N, d)`` or ``(H, N, d)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import tqdm

from .._validation import check_int, check_nonnegative, check_points
from .velocity import lot_velocity_estimate

#: the automatic window stops growing once the velocity's standard error is this fraction of its speed
FORECAST_RELATIVE_ERROR = 0.25


def extrapolate(snapshots, dt: Optional[float] = None, horizon=1.0, k: Optional[int] = None, order: int = 1,
                method: str = "auto", blur: Optional[float] = None, return_info: bool = False,
                progress: bool = False):
    r"""Extrapolate recorded snapshots beyond the last one with the LOT velocity (no simulator needed).

    The window is the last ``2k+1`` snapshots. By default (``k=None``) it is chosen as a forecaster
    would: the shortest window ending at the last frame (``k = 2, 4, 8, ...``) whose regression
    velocity is known to within 25% of its speed (:func:`~torchmf.lot.lot_velocity_estimate`), or
    the longest available when none is; so the step starts near the last frames rather than in the
    middle of a long series. ``return_info=True`` also returns where it started and how sure it was.
    The LOT
    velocity :math:`v` (and for ``order=2`` the second derivative :math:`a`) of the bulk law at the
    window's centre :math:`t_c` moves the central cloud to :math:`t = t_{last} + H`:
    :math:`x + s v(x)` (``order=1``, the projective Euler step) or :math:`x + s v + \tfrac{s^2}{2} a`
    (``order=2``), with :math:`s = t - t_c = k\,dt + H`. Particles need not be tracked (each snapshot
    is only a cloud), and frames may hold different numbers of particles: a
    :class:`~torchmf.data.Trajectories` with a ``mask`` (lost particles, varying counts) is
    used frame by frame on its observed particles (see :func:`~torchmf.lot.lot_velocity`), and the forecast is
    the central frame's observed particles moved, ``(N_c, d)``.

    Arguments:
        snapshots: ``(L, N, d)`` tensor/array or a :class:`~torchmf.data.Trajectories` with one
            experiment (then ``dt`` defaults to its uniform time spacing; a mask is honoured).
        dt: spacing of the snapshots.
        horizon: time beyond the last snapshot, a number or a sequence of ``H`` numbers.
        k: half-width of the window (default: chosen, above).
        order: 1 (Euler, LOT paper) or 2 (adds the curvature term).
        method, blur: transport backend, see :func:`~torchmf.lot.lot_velocity`.
        return_info: also return a dict: ``k``, ``centre_offset`` (the window's centre, in time before
            the last frame), ``steps`` (the step lengths from the centre, one per horizon) and the
            velocity's ``speed``, ``standard_error``, ``relative_error`` and ``significant``.
        progress: a progress bar over the windows tried.

    Returns:
        ``(N, d)`` for one horizon, ``(H, N, d)`` for a sequence (``N_c`` instead of ``N`` with a mask:
        the observed particles of the window's central frame); with ``return_info``, ``(forecast, info)``.
    """
    from ..data import Trajectories

    mask = None
    if isinstance(snapshots, Trajectories):
        if snapshots.n_experiments != 1:
            raise ValueError(f"snapshots: expected one experiment, but got M = {snapshots.n_experiments}; "
                             f"pass trajectories.positions[m] with dt")
        steps = snapshots.times.diff()
        if dt is None:
            if steps.numel() == 0 or float((steps - steps.mean()).abs().max()) > 1e-6 * float(steps.mean()):
                raise ValueError("dt: the snapshots' times are not uniformly spaced; pass dt and a uniform window")
            dt = float(steps.mean())
        mask = None if snapshots.mask is None else snapshots.mask[0]
        snapshots = snapshots.positions[0]
    if not isinstance(snapshots, torch.Tensor):
        snapshots = torch.as_tensor(snapshots)
    if dt is None:
        raise ValueError("dt: expected the snapshot spacing (a positive number) for tensor snapshots, but got None")
    if mask is None:
        snapshots = check_points("snapshots", snapshots)
    if snapshots.ndim != 3:
        raise ValueError(f"snapshots: expected shape (L, N, d), but got {tuple(snapshots.shape)}")
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, but got {order!r}")
    horizons = [float(h) for h in (horizon if isinstance(horizon, (list, tuple)) else [horizon])]
    for value in horizons:
        check_nonnegative("horizon", value)
    if k is not None:
        k = check_int("k", k, minimum=1)
        if 2 * k + 1 > snapshots.shape[0]:
            raise ValueError(f"k: a window of 2k+1 = {2 * k + 1} snapshots needs that many, but got "
                             f"{snapshots.shape[0]}")
    estimate, k = _forecast_window(snapshots, mask, dt, k, method, blur, progress)
    window = snapshots[-(2 * k + 1):]
    window_mask = None if mask is None else mask[-(2 * k + 1):]
    velocity, second = estimate.velocity, estimate.second_derivative
    centre = window[k] if window_mask is None else window[k][window_mask[k]]
    clouds = []
    for value in horizons:
        lag = k * dt + value
        cloud = centre + lag * velocity
        clouds.append(cloud if order == 1 else cloud + 0.5 * lag ** 2 * second)
    forecast = clouds[0] if not isinstance(horizon, (list, tuple)) else torch.stack(clouds)
    if not return_info:
        return forecast
    info = dict(estimate.summary(), k=k, centre_offset=k * dt, steps=[k * dt + value for value in horizons])
    return forecast, info


def _forecast_window(snapshots, mask, dt, k, method, blur, progress=False):
    """``(estimate, k)``: the given ``k``, or the shortest window ``k = 2, 4, ...`` ending at the last
    frame with relative error <= FORECAST_RELATIVE_ERROR (else the longest)."""
    largest = (snapshots.shape[0] - 1) // 2
    if largest < 1:
        raise ValueError(f"snapshots: expected at least 3 frames, but got {snapshots.shape[0]}")
    candidates = [k] if k is not None else sorted({min(2 ** p, largest) for p in range(1, largest.bit_length() + 1)})
    for candidate in tqdm(candidates, disable=not progress, desc="LOT windows", leave=False):
        window = snapshots[-(2 * candidate + 1):]
        window_mask = None if mask is None else mask[-(2 * candidate + 1):]
        estimate = lot_velocity_estimate(window, dt, candidate, method=method, blur=blur, mask=window_mask)
        if estimate.relative_error <= FORECAST_RELATIVE_ERROR:
            break
    return estimate, candidate
