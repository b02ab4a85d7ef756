r"""Exact transport between weighted clouds of any sizes: the monotone plan in 1-D, POT's network
simplex beyond.

With weights (or unequal sizes) the optimal plan :math:`\pi` is no longer a permutation; the map
is its barycentric projection :math:`T(x_i) = \sum_j \pi_{ij} y_j / a_i`. In 1-D the optimal plan
is the monotone (north-west corner) coupling of the two quantile functions, so
:math:`T(x_i) = \frac{1}{a_i}\int_{F_a(x_i^-)}^{F_a(x_i)} F_b^{-1}(t)\,dt`.
"""
from __future__ import annotations

import torch

from .atoms import normalised, site_transport
from .weights import barycentric_rows

__all__ = ["weighted_sorted_map", "weighted_plan", "weighted_assignment_map"]


def weighted_sorted_map(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Barycentric map of the monotone plan from ``x (N, 1)`` with weights ``a (N,)`` to ``y (M, 1)``
    with weights ``b (M,)`` (probability vectors, ``a > 0``): ``(N, 1)``, ``O((N + M) log(N + M))``."""
    order_x, order_y = x[:, 0].argsort(), y[:, 0].argsort()
    # the cumulative masses in float64: the breakpoints of both staircases are merged, and a float32
    # rounding of 1e-7 in a sum of 1e4 weights would misplace mass between neighbours
    upper_x = a[order_x].double().cumsum(0)
    upper_y = b[order_y].double().cumsum(0)
    upper_x, upper_y = upper_x / upper_x[-1], upper_y / upper_y[-1]
    breaks = torch.unique(torch.cat([upper_x.new_zeros(1), upper_x, upper_y]))  # sorted
    mass = breaks.diff()
    middle = 0.5 * (breaks[1:] + breaks[:-1])
    source = torch.searchsorted(upper_x, middle).clamp_max(x.shape[0] - 1)
    target = torch.searchsorted(upper_y, middle).clamp_max(y.shape[0] - 1)
    values = y[order_y, 0].double()[target]
    moved = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device).index_add_(0, source, mass * values)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device).index_add_(0, source, mass)
    mapped = torch.empty_like(x)
    mapped[order_x, 0] = (moved / total).to(x.dtype)
    return mapped


def weighted_plan(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """Optimal plan for the cost ``|x_i - y_j|^2`` between ``x (N, d)`` with weights ``a (N,)`` and
    ``y (M, d)`` with weights ``b (M,)``: POT's network simplex ``ot.emd(a, b, cost)`` in float64,
    ``(plan (N, M), cost (N, M))`` as numpy arrays. Raises ``RuntimeError`` if the simplex stopped
    before optimality."""
    import ot

    # translated and scaled first: ot.dist's |x|^2 + |y|^2 - 2 x.y loses its digits at large offsets
    source, target, _, scale = normalised(x.detach().to("cpu", torch.float64).numpy(),
                                          y.detach().to("cpu", torch.float64).numpy())
    a64 = a.detach().to("cpu", torch.float64).numpy()
    b64 = b.detach().to("cpu", torch.float64).numpy()
    cost = ot.dist(source, target, metric="sqeuclidean")
    plan, log = ot.emd(a64 / a64.sum(), b64 / b64.sum(), cost,
                       numItermax=max(100_000, 50 * x.shape[0] * y.shape[0]), log=True)
    if log.get("warning"):
        raise RuntimeError(f"the network simplex did not reach the optimal plan: {log['warning']}")
    return plan, cost * scale ** 2


def weighted_assignment_map(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Barycentric map ``(N, d)`` of the exact weighted plan, computed in float64 and returned in
    ``x``'s dtype and device (``a > 0``): between the distinct sites of the two clouds
    (:func:`~.atoms.site_transport`) where their pairs fit, else :func:`weighted_plan`."""
    solved = site_transport(x, y, a, b, force=True)
    if solved is not None:
        return solved[0]
    plan, _ = weighted_plan(x, y, a, b)
    return barycentric_rows(torch.as_tensor(plan, device=x.device), y.double()).to(x.dtype)
