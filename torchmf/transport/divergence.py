r"""W2 from the debiased Sinkhorn divergence, with the blur annealed below the distance.

For the cost :math:`|x - y|^2 / 2` and converged potentials the entropic transport value is
:math:`\mathrm{OT}_\varepsilon(a, b) = \langle a, f\rangle + \langle b, g\rangle`, and the debiased divergence

.. math::
    S_\varepsilon = \mathrm{OT}_\varepsilon(a, b) - \tfrac12 \mathrm{OT}_\varepsilon(a, a)
    - \tfrac12 \mathrm{OT}_\varepsilon(b, b)

tends to :math:`W_2^2 / 2` as :math:`\varepsilon \to 0`; it is exact for a translation at every
:math:`\varepsilon` (the cost's cross term separates), where the cost of the entropic plan was
inflated by about :math:`d\varepsilon / W_2` (+60% for a cloud against itself shifted by 0.01).
Between two samples the blur must sit well below :math:`W_2` itself, so :func:`w2_divergence`
starts from 5% of the clouds' own spreads and shrinks the blur until :math:`W_2 \ge` ``RATIO`` blurs
(at most ``ROUNDS`` solves), and warns, naming the blur, when the result is still within
``WARN_RATIO`` blurs.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .kernels import DenseKernel, centred, uniform_log
from .multiscale import SELF_TRUNCATE, multiscale_solve, truncated_kernel
from .online import online_solve
from .routing import resolve_method
from .sinkhorn import SinkhornSettings, symmetric_loop

__all__ = ["w2_divergence", "default_blur", "CloseToBlurWarning", "RATIO", "WARN_RATIO", "ROUNDS"]

RATIO = 8.0       # anneal until W2 >= RATIO blurs
WARN_RATIO = 6.0  # warn when W2 ends below this many blurs (annulus samples: -2.6% at 4 blurs, -0.8% at 8)
ROUNDS = 3        # solves at most (each at a smaller blur)
_MIN_SHARE = 0.2  # a new blur is at least this share of the last (a small W2 does not jump to a tiny blur)


class CloseToBlurWarning(RuntimeWarning):
    """The entropic W2 is within a few blurs: its bias may exceed a few percent."""


def default_blur(x: torch.Tensor, y: torch.Tensor) -> float:
    """5% of the larger of the two clouds' own spreads (largest per-axis standard deviation of each,
    ``(N, d)`` and ``(M, d)``), not the union's: two clouds 100 apart spread over 100 together, and
    that blur collapsed the Sinkhorn map (map spread 0.33 for a target spread of 1.02). 1e-3 for two
    point masses. The default of every Sinkhorn path (maps and :func:`w2_divergence`)."""
    spread = max(_spread(x), _spread(y))
    return 0.05 * spread if spread > 0 else 1e-3


def _spread(points):
    return float(points.std(dim=-2).max()) if points.shape[-2] > 1 else 0.0


def divergence_squared(x, y, blur, settings):
    """``2 S_eps`` (an estimate of W2^2, float) between uniform ``x (N, d)`` and ``y (M, d)`` at ``blur``,
    and the worst :class:`SinkhornReport` of the three solves."""
    eps = blur ** 2
    work_x, work_y, _ = centred(x, y)
    method = resolve_method("sinkhorn", max(x.shape[0], y.shape[0]), x.shape[1], device=x.device,
                            element_size=x.element_size())
    solve = multiscale_solve if method == "sinkhorn-multiscale" else online_solve
    _, f, g, report = solve(work_x, work_y, eps, 0.7, settings)
    cross = float(f.mean() + g.mean())
    selves = []
    for points in (work_x, work_y):
        a_log = uniform_log(points)
        if method == "sinkhorn-multiscale":
            kernel = truncated_kernel(points, points, points, math.sqrt(2 * SELF_TRUNCATE * eps))
        else:
            kernel = DenseKernel(points, points)
        f_self, self_report = symmetric_loop(kernel, a_log, eps, settings)
        selves.append(float(f_self.mean()))
        if self_report.error > report.error:
            report = self_report
    return max(0.0, 2 * cross - 2 * sum(selves)), report


def w2_divergence(x: torch.Tensor, y: torch.Tensor, blur: Optional[float], settings: SinkhornSettings):
    """W2 between the uniform clouds ``x (N, d)``, ``y (M, d)``: ``(value, blur used, report)``.

    With ``blur=None`` the blur starts at :func:`default_blur` and shrinks (``ROUNDS`` solves at
    most) until the estimate is at least ``RATIO`` blurs; a given blur is used as it is. Either way a
    result below ``WARN_RATIO`` blurs warns (:class:`CloseToBlurWarning`, naming the blur)."""
    fixed = blur is not None
    blur = default_blur(x, y) if blur is None else blur
    for round_ in range(1, ROUNDS + 1):
        squared, report = divergence_squared(x, y, blur, settings)
        value = math.sqrt(squared)
        if fixed or value >= RATIO * blur or round_ == ROUNDS:
            break
        blur = max(value / RATIO, _MIN_SHARE * blur)
    if value < WARN_RATIO * blur:
        warnings.warn(f"w2: the Sinkhorn estimate {value:.4g} is within {WARN_RATIO:g} blurs (blur = {blur:.3g}); "
                      f"its entropic bias may be several percent: pass a smaller blur or use method='exact'",
                      CloseToBlurWarning, stacklevel=4)
    return value, blur, report
