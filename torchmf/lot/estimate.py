r"""The default LOT velocity: a least-squares slope over the lags, smoothed in space, with its error bar.

Around the central cloud :math:`\mu_{t_0}` of a window, the transport map to the snapshot at lag
:math:`s_j = j h` moves each particle by

.. math::
    D_j(x) = T^{\mu_{t_0+s_j}}_{\mu_{t_0}}(x) - x = s_j\,v(x) + \tfrac{s_j^2}{2}\,a(x) + n_j(x),

where :math:`n_j` is noise: at short lags many particles map to themselves and :math:`D_j` is
their own Brownian step; at long lags it is the sampling noise of transport between two clouds.
Measured on box diffusion (N = 1,000), the noise over :math:`s_j` falls only as
:math:`s_j^{-0.8}`, so the paper's average of :math:`k` centred differences (each lag weighted
equally, section 5.2) is dominated by its shortest, noisiest lags. Here:

1. **Slope.** The odd part :math:`O_j = (D_j - D_{-j})/2` is :math:`s_j v + ` odd noise (the
   curvature cancels); its least-squares slope over ``lags`` lags spread evenly over the window,
   :math:`\hat v = \sum_j s_j O_j / \sum_j s_j^2`, weights the long lags as their signal warrants.
2. **A copy of its noise.** The even part :math:`E_j = (D_j + D_{-j})/2` holds the same noise
   (past and future increments are independent given the centre) plus the curvature term; the same
   slope of it, :math:`\tilde n = \sum_j s_j E_j / \sum_j s_j^2`, is a copy of the noise of
   :math:`\hat v` with its spatial correlation (measured: within 2-20% of the odd part's noise per
   lag; the curvature makes it err on the large side).
3. **Smoothing.** :math:`\hat v` is smoothed by local-linear regression over the particles, the
   bandwidth chosen by the correlated-noise error estimate of :func:`choose_bandwidth` (from no
   smoothing to the global affine fit).
4. **Error bar.** ``standard_error`` is the RMS over the particles of the smoothed noise copy, the
   :math:`L^2(\mu)` size of the estimate's noise; the velocity is ``significant`` when its speed
   exceeds twice that.
5. **A check of the error bar** (``error="split-half"`` or ``"max"``). The noise copy holds the
   noise's size but not always its spatial correlation: when particles move persistently (runs of
   swimming cells, inertia) past and future increments are correlated, and smoothing shrinks the
   copy more than the noise (measured on chemotaxis, N = 1,000, 16 seeds: raw slope's spread across
   seeds 1.09x its copy, smoothed 2.47x). The split-half error estimates the same slope and smoothing
   (same bandwidth) on two random halves of the particles (the same particles at every lag), evaluates
   both at the central cloud, and takes :math:`\mathrm{RMS}(\hat v_A - \hat v_B)/2` (each half
   has twice the variance of the whole): no assumption on the noise's structure, about 1.5x the
   transport cost in 2-D. ``"max"`` reports the larger of the two.

Shapes: snapshots ``(2k+1, N, d)``; velocities ``(N, d)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .._validation import check_int, check_positive
from ..transport import TransportSolver
from .local_linear import choose_bandwidth, local_linear

__all__ = ["VelocityEstimate", "estimate_velocity", "regression_lags", "SMOOTHING_SUBSET", "ERROR_ESTIMATES"]

#: how ``standard_error`` is estimated (module docstring, items 4-5)
ERROR_ESTIMATES = ("noise-copy", "split-half", "max")

#: the bandwidth is scored at this many particles at most (the smoother still uses every particle)
SMOOTHING_SUBSET = 2000


@dataclass
class VelocityEstimate:
    """A LOT velocity with its error bar (:func:`estimate_velocity`).

    ``velocity (N, d)`` and ``second_derivative (N, d)`` at the central cloud's particles;
    ``standard_error``: RMS over the particles of the velocity's noise (same units as the velocity);
    ``speed``: RMS of the velocity; ``bandwidth``: of the smoothing (``inf``: global affine fit,
    ``0``: none); ``lags``: the lags used (in snapshots); ``dt``: the snapshot spacing;
    ``noise_copy_error`` / ``split_half_error``: the two error estimates (NaN when not computed),
    ``error``: which one ``standard_error`` is."""

    velocity: torch.Tensor
    second_derivative: torch.Tensor
    standard_error: float
    speed: float
    bandwidth: float
    lags: List[int]
    dt: float
    scores: dict = field(default_factory=dict)
    noise_copy_error: float = float("nan")
    split_half_error: float = float("nan")
    error: str = "noise-copy"

    @property
    def relative_error(self) -> float:
        """``standard_error / speed`` (inf for a still cloud)."""
        return self.standard_error / self.speed if self.speed > 0 else float("inf")

    @property
    def significant(self) -> bool:
        """True when the speed exceeds twice its standard error: the cloud is seen to move."""
        return self.speed > 2 * self.standard_error

    def summary(self) -> dict:
        """Plain numbers for a run record or JSON."""
        return {"speed": self.speed, "standard_error": self.standard_error, "relative_error": self.relative_error,
                "significant": self.significant, "bandwidth": self.bandwidth, "lags": len(self.lags),
                "window_half_width": max(self.lags) if self.lags else 0, "error": self.error,
                "noise_copy_error": self.noise_copy_error, "split_half_error": self.split_half_error}


def regression_lags(k: int, lags: int) -> List[int]:
    """``lags`` positive lags spread evenly over ``1..k`` (all of them when ``lags >= k``)."""
    if lags >= k:
        return list(range(1, k + 1))
    return sorted({max(1, round(k * i / lags)) for i in range(1, lags + 1)})


def estimate_velocity(clouds, dt: float, k: int, lags: int = 10, smoothing="auto", method: str = "exact",
                      blur: Optional[float] = None, solver: Optional[TransportSolver] = None,
                      warm_start: bool = True, error: str = "noise-copy") -> VelocityEstimate:
    """The regression LOT velocity of the module docstring at ``clouds[k]``.

    Arguments:
        clouds: ``(2k+1, N, d)`` snapshots, or a sequence of ``2k+1`` clouds ``(N_j, d)``.
        dt: snapshot spacing.
        k: half-width (checked by the caller, :func:`torchmf.lot.lot_velocity`).
        lags: positive lags used (each costs two transport solves).
        smoothing: ``"auto"`` (bandwidth from the data), ``None`` (the raw slope), or a bandwidth in
            length units (``inf``: the global affine fit).
        method, blur, solver, warm_start: the transport solves (see :func:`torchmf.lot.lot_velocity`).
        error: ``"noise-copy"``, ``"split-half"`` or ``"max"`` (module docstring, items 4-5).
    """
    dt = check_positive("dt", dt)
    lags = check_int("lags", lags, minimum=1)
    if error not in ERROR_ESTIMATES:
        raise ValueError(f"error: expected one of {list(ERROR_ESTIMATES)}, but got {error!r}")
    centre = clouds[k]
    if solver is None:
        solver = TransportSolver(method, blur=blur, debias=False)
    chosen = regression_lags(k, lags)
    raw, noise, raw_second = _slopes(clouds, k, chosen, dt, solver, warm_start)
    bandwidth, scores = _bandwidth(centre, raw, noise, smoothing)
    if bandwidth == 0.0:
        velocity, smoothed_noise, second = raw, noise, raw_second
    else:
        smoothed = local_linear(centre, torch.cat([raw, noise, raw_second], 1), bandwidth)
        velocity, smoothed_noise, second = smoothed.split(centre.shape[1], dim=1)
    noise_copy = float(smoothed_noise.pow(2).sum(-1).mean().sqrt())
    split = float("nan")
    if error != "noise-copy":
        split = _split_half_error(clouds, k, chosen, dt, solver, warm_start, bandwidth)
    standard_error = {"noise-copy": noise_copy, "split-half": split,
                      "max": max(noise_copy, split) if split == split else noise_copy}[error]
    return VelocityEstimate(velocity, second, standard_error, float(velocity.pow(2).sum(-1).mean().sqrt()),
                            bandwidth, chosen, dt, scores, noise_copy, split, error)


def _slopes(clouds, k, chosen, dt, solver, warm_start):
    """The raw slope (odd part), its noise copy (even part) and the raw second derivative, each ``(N, d)``."""
    centre = clouds[k]
    solver.reset()
    order = [-j for j in reversed(chosen)] + chosen  # consecutive targets: warm starts help
    maps = {j: solver(centre, clouds[k + j], warm_start=warm_start) for j in order}
    lag_times = torch.tensor([j * dt for j in chosen], dtype=centre.dtype, device=centre.device)
    odd = torch.stack([0.5 * (maps[j] - maps[-j]) for j in chosen])              # (m, N, d)
    even = torch.stack([0.5 * (maps[j] + maps[-j]) - centre for j in chosen])   # (m, N, d)
    weights = (lag_times / lag_times.pow(2).sum())[:, None, None]
    quartic = (lag_times.pow(2) / 2).pow(2).sum()
    raw_second = ((lag_times.pow(2) / 2)[:, None, None] * even).sum(0) / quartic
    return (weights * odd).sum(0), (weights * even).sum(0), raw_second


def _split_half_error(clouds, k, chosen, dt, solver, warm_start, bandwidth):
    """RMS over the central cloud of the difference of the two halves' smoothed slopes, over 2.

    A labelled window (one tensor) is split by particle index, so each half is a smaller ensemble
    of the same particles at every lag; clouds of different sizes are split each on its own. NaN
    without smoothing (a raw per-particle slope has no value at the other half's particles) or with
    fewer than 8 particles in a cloud."""
    sizes = [cloud.shape[0] for cloud in clouds]
    if bandwidth == 0.0 or min(sizes) < 8:
        return float("nan")
    centre = clouds[k]
    generator = torch.Generator().manual_seed(0)  # the same window always gets the same error bar
    labelled = isinstance(clouds, torch.Tensor)
    orders = [torch.randperm(size, generator=generator).to(centre.device)
              for size in ([sizes[0]] if labelled else sizes)]
    halves = []
    for part in (0, 1):
        picked = [order[part * (len(order) // 2):(part + 1) * (len(order) // 2)] for order in orders]
        if labelled:
            half = clouds[:, picked[0]]
        else:
            half = [cloud[index] for cloud, index in zip(clouds, picked)]
        raw, _, _ = _slopes(half, k, chosen, dt, solver, warm_start and labelled)
        halves.append(local_linear(half[k], raw, bandwidth, at=centre))
    return float((halves[0] - halves[1]).pow(2).sum(-1).mean().sqrt()) / 2


def _bandwidth(centre, raw, noise, smoothing):
    if smoothing is None:
        return 0.0, {}
    if smoothing == "auto":
        evaluation = None
        if centre.shape[0] > SMOOTHING_SUBSET:
            # a fixed generator: the same window always gets the same bandwidth
            generator = torch.Generator().manual_seed(0)
            evaluation = torch.randperm(centre.shape[0], generator=generator)[:SMOOTHING_SUBSET].to(centre.device)
        bandwidth, _, scores = choose_bandwidth(centre, raw, noise, evaluation=evaluation)
        return bandwidth, {str(key): value for key, value in scores.items()}
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise TypeError(f"smoothing: expected 'auto', None or a bandwidth (a positive number), "
                        f"but got {type(smoothing).__name__}")
    if smoothing == float("inf"):
        return float("inf"), {}
    return check_positive("smoothing", smoothing), {}
