r"""Extrapolation of recorded snapshots with the LOT velocity (no simulator needed).

Shapes: snapshots ``(L, N, d)``; forecasts ``(N, d)`` or ``(H, N, d)``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int, check_nonnegative, check_points
from .velocity import lot_velocity


def extrapolate(snapshots, dt: Optional[float] = None, horizon=1.0, k: Optional[int] = None, order: int = 1,
                method: str = "auto", blur: Optional[float] = None) -> torch.Tensor:
    r"""Extrapolate recorded snapshots beyond the last one with the LOT velocity (no simulator needed).

    The window is the last ``2k+1`` snapshots (default: the largest odd number available); the LOT
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
        k: half-width of the window (default ``(L - 1) // 2``).
        order: 1 (Euler, LOT paper) or 2 (adds the curvature term).
        method, blur: transport backend, see :func:`~torchmf.lot.lot_velocity`.

    Returns:
        ``(N, d)`` for one horizon, ``(H, N, d)`` for a sequence (``N_c`` instead of ``N`` with a mask:
        the observed particles of the window's central frame).
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
    if k is None:
        k = (snapshots.shape[0] - 1) // 2
    k = check_int("k", k, minimum=1)
    if 2 * k + 1 > snapshots.shape[0]:
        raise ValueError(f"k: a window of 2k+1 = {2 * k + 1} snapshots needs that many, but got {snapshots.shape[0]}")
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, but got {order!r}")
    horizons = [float(h) for h in (horizon if isinstance(horizon, (list, tuple)) else [horizon])]
    for value in horizons:
        check_nonnegative("horizon", value)
    window = snapshots[-(2 * k + 1):]
    window_mask = None if mask is None else mask[-(2 * k + 1):]
    result = lot_velocity(window, dt, k=k, method=method, blur=blur, return_second_derivative=order == 2,
                          mask=window_mask)
    velocity, second = (result, None) if order == 1 else result
    centre = window[k] if window_mask is None else window[k][window_mask[k]]
    clouds = []
    for value in horizons:
        lag = k * dt + value
        cloud = centre + lag * velocity
        clouds.append(cloud if second is None else cloud + 0.5 * lag ** 2 * second)
    return clouds[0] if not isinstance(horizon, (list, tuple)) else torch.stack(clouds)
