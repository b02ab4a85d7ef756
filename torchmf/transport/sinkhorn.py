r"""The one Sinkhorn loop every torch backend runs, and its stopping rule.

:func:`sinkhorn_loop` anneals :math:`\varepsilon` over ``levels`` and, at every level, alternates
the log-domain updates

.. math::
    f \leftarrow (1 - \omega) f + \omega\, \mathrm{softmin}_\varepsilon(\log b + g/\varepsilon),\qquad
    g \leftarrow (1 - \omega) g + \omega\, \mathrm{softmin}_\varepsilon(\log a + f/\varepsilon)

(over-relaxed for :math:`\omega > 1`, plain Sinkhorn for :math:`\omega = 1`). The stopping rule reads
the sup-norm change of :math:`g` in units of :math:`\varepsilon`,
:math:`\delta = \max_j |g^{new}_j - g_j| / \varepsilon`, which is the largest relative error of a
column marginal of the current plan (:math:`b_j e^{(g_j - g^{new}_j)/\varepsilon}`), not a mean.
Intermediate levels stop at ``level_tolerance`` or ``level_iterations``; the final level runs to
``tolerance`` or ``max_iterations``, and :class:`SinkhornReport` says which.

Which :math:`\omega`: the fixed point is the same for every :math:`\omega \in (0, 2)`; over-relaxation
only changes the speed. Near the solution the plain iteration contracts by a rate :math:`r` close to 1
at small :math:`\varepsilon`, and :math:`\omega` near :math:`2/(1 + \sqrt{1 - r})` makes it
:math:`\approx 1 - 2\sqrt{1 - r}`. Far from the solution large :math:`\omega` can oscillate, so the
annealing levels, which start near their solution, are where it pays.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional

import numpy as np
import torch

__all__ = ["SinkhornReport", "SinkhornSettings", "sinkhorn_loop", "symmetric_loop", "epsilon_schedule", "geomloss_schedule",
           "diameter"]


_PATIENCE = 5  # reads without a new best error before the over-relaxation is damped
_GIVE_UP = 50   # reads without a new best error at omega = 1 before a level is given up (reported)


class SinkhornSettings(NamedTuple):
    """How far and how fast :func:`sinkhorn_loop` iterates (see the module docstring).

    ``tolerance``: sup-norm potential change, in units of eps, that ends the final level.
    ``max_iterations``: cap at the final level (a solve that hits it is reported unconverged).
    ``level_tolerance``, ``level_iterations``: the same for the annealing levels above it.
    ``omega``: over-relaxation factor in (0, 2). ``check_every``: iterations between host reads
    of the error (1 on CPU; a few on CUDA, where each read is a synchronisation).
    """

    tolerance: float = 1e-2
    max_iterations: int = 3000
    level_tolerance: float = 1e-1
    level_iterations: int = 2
    omega: float = 1.9
    check_every: int = 1


class SinkhornReport(NamedTuple):
    """What a solve achieved: ``iterations`` (f and g update pairs over all levels), ``error``
    (the last sup-norm change of g in units of eps at the final eps), the ``tolerance`` it was asked
    for, and whether ``converged`` (``error <= tolerance``)."""

    iterations: int
    error: float
    tolerance: float
    converged: bool

    def __add__(self, other: "SinkhornReport") -> "SinkhornReport":  # type: ignore[override]
        return SinkhornReport(self.iterations + other.iterations, other.error, other.tolerance, other.converged)


def sinkhorn_loop(kernel, a_log: torch.Tensor, b_log: torch.Tensor, levels: List[float],
                  settings: SinkhornSettings, f: Optional[torch.Tensor] = None, g: Optional[torch.Tensor] = None):
    r"""Anneal and converge: ``(f (N,), g (M,), SinkhornReport)``.

    ``kernel`` is a :class:`~torchmf.transport.kernels.DenseKernel` or ``SparseKernel`` from ``x``
    to ``y``; ``a_log (N,)``, ``b_log (M,)`` the log-weights; ``levels`` the decreasing epsilons
    (the last is the target); ``f``, ``g`` a start (default: the first level's one-sided soft-mins).
    The returned ``f`` is a plain (not relaxed) update from the returned ``g``, so the rows of the
    plan :math:`\pi_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}` sum exactly to ``a``.
    """
    transposed = kernel.transpose()
    if g is None:
        f = kernel.softmin(levels[0], b_log)
        g = transposed.softmin(levels[0], a_log + f / levels[0])
    iterations, error = 0, math.inf
    for index, eps in enumerate(levels):
        final = index == len(levels) - 1
        limit = settings.max_iterations if final else settings.level_iterations
        target = settings.tolerance if final else settings.level_tolerance
        # over-relaxation only at the final level: on the short annealing levels it leaves the
        # potentials far from the level's solution, and a sparse kernel pruned from them can lose
        # pairs the finer levels need (seen: an error stuck at log 2 on the affine case)
        omega = settings.omega if final else 1.0
        f, g, used, error = _iterate(kernel, transposed, a_log, b_log, eps, f, g, limit, target, omega,
                                     settings.check_every)
        iterations += used
    eps = levels[-1]
    f = kernel.softmin(eps, b_log + g / eps)
    return f, g, SinkhornReport(iterations, error, settings.tolerance, error <= settings.tolerance)


def _iterate(kernel, transposed, a_log, b_log, eps, f, g, limit, target, omega, check_every):
    """One level: relaxed updates until the error reaches ``target`` or ``limit`` iterations.

    Safeguard: over-relaxation far from the solution can cycle (seen at omega = 1.9 on a curved
    cloud: the error stuck at 1.2 for 5,000 iterations). When the error has not improved on its best
    for ``_PATIENCE`` reads, omega is pulled halfway back to 1 (plain Sinkhorn always converges)."""
    error, used = math.inf, 0
    best, stalled = math.inf, 0
    for used in range(1, limit + 1):
        f = _relax(f, kernel.softmin(eps, b_log + g / eps), omega)
        g_new = transposed.softmin(eps, a_log + f / eps)
        change = (g_new - g).abs().max()
        g = _relax(g, g_new, omega)
        if used % check_every == 0 or used == limit:
            error = float(change) / eps
            if error <= target:
                break
            if error < best:
                best, stalled = error, 0
                continue
            stalled += 1
            if stalled >= _PATIENCE and omega > 1.0:
                # damp towards plain Sinkhorn; below 1.05 plain is as fast, and it always converges
                omega = 1.0 + 0.5 * (omega - 1.0) if omega > 1.1 else 1.0
                best, stalled = error, 0
            elif stalled >= _GIVE_UP:
                break  # plain Sinkhorn that does not improve: the support cannot carry the marginals
    return f, g, used, error


def symmetric_loop(kernel, a_log: torch.Tensor, eps: float, settings: SinkhornSettings, f=None):
    r"""The self-transport problem OT_eps(a, a) (debiasing): ``(f (N,), SinkhornReport)``.

    Its solution is symmetric (f = g), and the averaged update
    :math:`f \leftarrow \tfrac12 (f + \mathrm{softmin}_\varepsilon(\log a + f/\varepsilon))` converges in a
    few tens of iterations where alternating updates from zero took hundreds (measured at N = 5,000:
    the self-transport was 60% of a debiased solve). Stops on the same sup-norm rule."""
    f = torch.zeros_like(a_log) if f is None else f
    error, used = math.inf, 0
    for used in range(1, settings.max_iterations + 1):
        f_new = 0.5 * (f + kernel.softmin(eps, a_log + f / eps))
        change = (f_new - f).abs().max()
        f = f_new
        if used % settings.check_every == 0 or used == settings.max_iterations:
            error = 2 * float(change) / eps  # the averaged step is half the plain Sinkhorn change
            if error <= settings.tolerance:
                break
    return f, SinkhornReport(used, error, settings.tolerance, error <= settings.tolerance)


def _relax(old, new, omega):
    if omega == 1.0:
        return new
    return torch.lerp(old, new, omega)  # out of place: a warm start's potentials are kept by the solver


def epsilon_schedule(start: float, eps: float, scaling: float) -> List[float]:
    """Geometric annealing from ``start**2`` down to ``eps`` (the blur shrinks by ``scaling``)."""
    levels = [max(start ** 2, eps)]
    while levels[-1] * scaling ** 2 > eps:
        levels.append(levels[-1] * scaling ** 2)
    levels.append(eps)
    return levels


def geomloss_schedule(diameter_: float, blur: float, scaling: float) -> List[float]:
    """geomloss' ``epsilon_schedule`` for p = 2, so that :func:`torchmf.transport.sinkhorn_potentials`
    takes the same steps as ``SamplesLoss("sinkhorn")``."""
    steps = np.arange(2 * np.log(diameter_), 2 * np.log(blur), 2 * np.log(scaling))
    return [diameter_ ** 2] + [float(np.exp(e)) for e in steps] + [blur ** 2]


def diameter(x: torch.Tensor, y: torch.Tensor) -> float:
    """Diagonal of the bounding box of both clouds (one host read)."""
    both = torch.cat([x, y])
    return float((both.max(0).values - both.min(0).values).norm())
