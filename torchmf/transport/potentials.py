r"""geomloss' Sinkhorn scheme on the online kernel: dual potentials and the barycentric map.

:func:`sinkhorn_potentials` runs exactly geomloss' ``SamplesLoss("sinkhorn", p=2)`` loop (one
symmetric averaged update per annealing level, a final extrapolation) with the tiled log-sum-exp,
so that it equals geomloss' tensorized potentials without the N x M matrix. Like geomloss it does
not iterate to convergence: for converged potentials use :func:`torchmf.transport.sinkhorn_loop`
through :class:`~torchmf.transport.TransportSolver` or :func:`torchmf.metrics.w2`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from .._validation import check_points, check_positive
from .kernels import DenseKernel, centred
from .routing import check_tiling
from .sinkhorn import diameter as bounding_diameter, geomloss_schedule
from .solver import default_blur
from .weights import check_weights, log_weights

__all__ = ["SinkhornPotentials", "sinkhorn_potentials", "barycentric_map"]


class SinkhornPotentials(NamedTuple):
    """Dual potentials of the entropic OT problem between ``a`` on ``x`` and ``b`` on ``y``.

    ``f (N,)`` on ``x`` and ``g (M,)`` on ``y`` solve OT_eps(a, b) (geomloss' ``f_ba``, ``g_ab``);
    with debiasing, ``f_self (N,)`` solves OT_eps(a, a) and ``g_self (M,)`` OT_eps(b, b)
    (otherwise ``None``). ``eps = blur**2``; the cost is :math:`|x - y|^2 / 2`.
    ``debiased()`` gives geomloss' ``potentials=True, debias=True`` pair ``(f - f_self, g - g_self)``.
    """

    f: torch.Tensor
    g: torch.Tensor
    f_self: Optional[torch.Tensor]
    g_self: Optional[torch.Tensor]
    eps: float

    def debiased(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.f_self is None:
            return self.f, self.g
        return self.f - self.f_self, self.g - self.g_self


def sinkhorn_potentials(x: torch.Tensor, y: torch.Tensor, blur: Optional[float] = None, scaling: float = 0.7,
                        debias: bool = True, a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
                        tile_entries: Optional[int] = None, memory_budget: Optional[int] = None,
                        diameter: Optional[float] = None) -> SinkhornPotentials:
    r"""Online (tiled, torch-only) Sinkhorn potentials with geomloss' epsilon-scaling scheme.

    The cost matrix is never stored: every soft-min is a log-sum-exp over row tiles (see
    :func:`tile_rows`). The loop is geomloss' (``SamplesLoss("sinkhorn", p=2)``): epsilon from
    ``diameter**2`` down to ``blur**2`` by factors ``scaling**2``, symmetric averaged updates, the
    self-transport problems alongside when ``debias``, and a last full extrapolation. There is
    no host synchronisation inside the loop (the diameter is read once, before it).

    Arguments:
        x: ``(N, d)`` source points; y: ``(M, d)`` target points (same device and dtype).
        blur: :math:`\sqrtarepsilon` (default :func:`default_blur`); scaling: in (0, 1).
        debias: also solve OT(a, a) and OT(b, b) (``f_self``, ``g_self``).
        a, b: weights ``(N,)``, ``(M,)`` summing to 1 (default uniform).
        tile_entries, memory_budget: tile size overrides (see :func:`tile_rows`).
        diameter: starting length scale (default: the diagonal of the bounding box, as geomloss).

    Returns:
        :class:`SinkhornPotentials` with ``f (N,)``, ``g (M,)`` (and ``f_self``, ``g_self``).
    """
    x = check_points("x", x)
    y = check_points("y", y)
    if x.ndim != 2 or y.ndim != 2 or y.shape[1] != x.shape[1]:
        raise ValueError(f"y: expected (N, d) and (M, d) clouds of the same d, but got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if y.device != x.device or y.dtype != x.dtype:
        raise ValueError(f"y: expected device {x.device} and dtype {x.dtype} like x, but got {y.device}, {y.dtype}")
    scaling = check_positive("scaling", scaling)
    if not scaling < 1:
        raise ValueError(f"scaling: expected a number in (0, 1), but got {scaling}")
    tiling = check_tiling(tile_entries, memory_budget)
    blur = default_blur(x, y) if blur is None else check_positive("blur", blur)
    a_log = _weights_log("a", a, x)
    b_log = _weights_log("b", b, y)
    work_x, work_y, _ = centred(x, y)
    if diameter is None:
        diameter = bounding_diameter(x, y)
    levels = geomloss_schedule(check_positive("diameter", diameter), blur, scaling)
    xy, yx = DenseKernel(work_x, work_y, tiling), DenseKernel(work_y, work_x, tiling)
    pairs = [(xy, b_log, yx, a_log)]  # (kernel for f, weights f sums over, kernel for g, weights g sums over)
    if debias:
        pairs += [(DenseKernel(work_x, work_x, tiling), a_log, None, None),
                  (DenseKernel(work_y, work_y, tiling), b_log, None, None)]
    with torch.no_grad():
        eps = levels[0]
        f = xy.softmin(eps, b_log)
        g = yx.softmin(eps, a_log)
        selves = [kernel.softmin(eps, log) for kernel, log, _, _ in pairs[1:]]
        for eps in levels:
            f_new, g_new = xy.softmin(eps, b_log + g / eps), yx.softmin(eps, a_log + f / eps)
            selves_new = [kernel.softmin(eps, log + h / eps) for (kernel, log, _, _), h in zip(pairs[1:], selves)]
            f, g = 0.5 * (f + f_new), 0.5 * (g + g_new)
            selves = [0.5 * (h + h_new) for h, h_new in zip(selves, selves_new)]
        f, g = xy.softmin(eps, b_log + g / eps), yx.softmin(eps, a_log + f / eps)
        selves = [kernel.softmin(eps, log + h / eps) for (kernel, log, _, _), h in zip(pairs[1:], selves)]
    f_self, g_self = selves if debias else (None, None)
    return SinkhornPotentials(f, g, f_self, g_self, blur ** 2)


def barycentric_map(x: torch.Tensor, y: torch.Tensor, potentials: SinkhornPotentials, debias: bool = True,
                    a: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None,
                    tile_entries: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    r"""Barycentric projection of the entropic plan, tile by tile: ``(N, d)``.

    :math:`T(x_i) = \sum_j \pi_{ij} y_j / a_i` with :math:`\pi_{ij} \propto b_j
    \exp((g_j - C_{ij})/arepsilon)`; with ``debias`` (and ``potentials.f_self``) the
    self-transport is subtracted, :math:`T(x) = x + T^{x	o y}(x) - T^{x	o x}(x)`, which is
    :math:`x - 
abla_{x_i} S_arepsilon / a_i` for geomloss' debiased Sinkhorn divergence.
    """
    x = check_points("x", x)
    y = check_points("y", y)
    tiling = check_tiling(tile_entries, memory_budget)
    eps = potentials.eps
    work_x, work_y, shift = centred(x, y)
    with torch.no_grad():
        mapped = DenseKernel(work_x, work_y, tiling).barycentre(eps, _weights_log("b", b, y) + potentials.g / eps,
                                                                 work_y) + shift
        if debias and potentials.f_self is not None:
            own = DenseKernel(work_x, work_x, tiling).barycentre(eps, _weights_log("a", a, x) + potentials.f_self / eps,
                                                                  work_x) + shift
            mapped = mapped - own + x
    return mapped


def _weights_log(name, weights, points):
    return log_weights(check_weights(name, weights, points, positive="the log-weights of the potentials"), points)
