r"""Separable test functions :math:`\psi_k(x, t) = \prod_i \phi_{m_x,p_x}(x_i - c_{k,i})\ \phi_{m_t,p_t}(t - t_k)`.

The 1-D factor is eq. (4.3) of the paper,

.. math:: \phi_{m,p}(v; \Delta) = \max\{1 - (v / (m\Delta))^2, 0\}^p,

supported on :math:`2m+1` grid points of spacing :math:`\Delta` (``h`` in space, ``dt`` in time).
Query points (the centres) are every ``stride``-th grid point whose support fits in the grid.

Integrals :math:`\langle \partial^\alpha\psi_k, F\rangle` over the grid (trapezoidal rule; the test
functions vanish at the ends of their supports, so the rule's weights are the plain spacings)
are the discrete convolution of ``F`` with the separable reference function evaluated at the
query points. Because the reference function is separable, this is one banded
``(n_queries_axis, G_axis)`` matrix product per axis (:class:`AxisTestFunctions`), which is the
FFT convolution restricted to the subsampled centres.

Support rule (:func:`changepoint_support`, the paper's changepoint idea, documented here): the
mean Fourier magnitude of the histogram along an axis is accumulated over wavenumbers; a
two-segment linear fit of that cumulative curve locates the changepoint :math:`k^*` where the
signal spectrum gives way to the flat (noise) floor. ``phi_{m,p}`` is close to a Gaussian of
standard deviation :math:`m\Delta/\sqrt{2p}`; ``m`` is chosen so that its Fourier transform has
decayed to :math:`e^{-\tau^2/2}` (``tau`` standard deviations, default 2) at :math:`k^*`, i.e.
:math:`m = \tau\sqrt{2p}\, G / (2\pi k^*)`, then bounded to ``[min_points, G // 4]`` (supports of
at least ``2 min_points + 1`` points, at most half the axis).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .._validation import check_int, check_positive

__all__ = ["phi", "AxisTestFunctions", "TestFunctions", "changepoint_support"]


def phi(v: torch.Tensor, m: int, p: int, spacing: float, order: int = 0) -> torch.Tensor:
    """:math:`\\phi_{m,p}` (eq. 4.3) or its ``order``-th derivative (0, 1, 2) at offsets ``v`` (any shape)."""
    scale = m * spacing
    u = v / scale
    inside = (u.abs() < 1).to(v.dtype)
    base = torch.clamp(1 - u * u, min=0)
    if order == 0:
        return base ** p
    if order == 1:
        return p * base ** (p - 1) * (-2 * u) / scale * inside
    if order == 2:
        second = p * (p - 1) * base ** max(p - 2, 0) * 4 * u * u - 2 * p * base ** (p - 1)
        return second / scale ** 2 * inside
    raise ValueError(f"order: expected 0, 1 or 2, but got {order}")


class AxisTestFunctions:
    """The 1-D factor along one axis: centres and quadrature-weighted matrices per derivative order.

    Arguments:
        size: grid points along the axis (``G`` or ``L``).
        spacing: :math:`\\Delta`.
        m: support half-width in points (support ``2m+1`` points).
        p: degree.
        stride: every ``stride``-th admissible point is a query point.
        name: what the axis is, for error messages (``"time"``, ``"x1"``...).
    """

    def __init__(self, size: int, spacing: float, m: int, p: int, stride: int, name: str = "axis"):
        self.size = check_int("size", size, minimum=1)
        self.spacing = check_positive("spacing", spacing)
        self.m = check_int("m", m, minimum=1)
        self.p = check_int("p", p, minimum=3)  # C^2 at the support ends needs p >= 3
        self.stride = check_int("stride", stride, minimum=1)
        self.name = name
        if 2 * self.m + 1 > self.size:
            what = "time points" if name == "time" else f"grid points along {name}"
            raise ValueError(
                f"{'times' if name == 'time' else 'grid'}: too few {what} ({self.size}) for a test-function support of "
                f"2m+1 = {2 * self.m + 1} points (m = {self.m}); record more {what} or lower m")
        self.centers = list(range(self.m, self.size - self.m, self.stride))
        self._cache = {}

    @property
    def count(self) -> int:
        return len(self.centers)

    def matrix(self, order: int, device=None, dtype=torch.float64) -> torch.Tensor:
        """``(count, size)``: row ``k`` holds :math:`\\Delta\\,\\phi^{(order)}(x_j - c_k)`."""
        key = (order, str(device), dtype)
        if key not in self._cache:
            index = torch.arange(self.size, device=device, dtype=torch.float64)
            centers = torch.tensor(self.centers, device=device, dtype=torch.float64)
            offsets = (index.unsqueeze(0) - centers.unsqueeze(1)) * self.spacing
            values = phi(offsets, self.m, self.p, self.spacing, order) * self.spacing
            self._cache[key] = values.to(dtype)
        return self._cache[key]

    def __repr__(self) -> str:
        return f"AxisTestFunctions({self.name}: m={self.m}, p={self.p}, stride={self.stride}, {self.count} centres)"


class TestFunctions:
    """Separable test functions on a space-time grid: ``d`` spatial axes and the time axis.

    Arguments:
        spatial: one :class:`AxisTestFunctions` per spatial axis.
        time: the time-axis factor.
    """

    __test__ = False  # not a pytest class

    def __init__(self, spatial: Sequence[AxisTestFunctions], time: AxisTestFunctions):
        self.spatial = list(spatial)
        self.time = time

    @property
    def count(self) -> int:
        """Number of test functions ``n`` (rows of G)."""
        return self.time.count * math.prod(axis.count for axis in self.spatial)

    def integrate(self, field: torch.Tensor, time_order: int, space_orders: Sequence[int]) -> torch.Tensor:
        """:math:`\\langle \\partial_t^{a}\\partial^{\\beta}\\psi_k, F\\rangle` for all ``k``.

        Arguments:
            field: ``(L, G_1, ..., G_d)``.
            time_order: ``a`` (0 or 1); space_orders: ``beta`` (``d`` entries, 0..2).

        Returns:
            ``(n,)``.
        """
        # the spatial strides thin the grid most, so contract the spatial axes first
        result = self.contract_space(field, space_orders)  # (L, n_1, ..., n_d)
        matrix = self.time.matrix(time_order, field.device, field.dtype)
        return torch.tensordot(matrix, result, dims=([1], [0])).reshape(-1)

    def contract_space(self, field: torch.Tensor, space_orders: Sequence[int]) -> torch.Tensor:
        """Contract the spatial axes of ``(T, *G)`` with the test functions: ``-> (T, n_1, ..., n_d)``."""
        # last axis first: it is contiguous (a plain matrix product) and shrinks the array the most
        result = field
        for axis in range(len(self.spatial) - 1, -1, -1):
            matrix = self.spatial[axis].matrix(space_orders[axis], field.device, field.dtype)
            result = torch.movedim(torch.tensordot(result, matrix, dims=([1 + axis], [1])), -1, 1 + axis)
        return result

    def integrate_time(self, field: torch.Tensor, time_order: int) -> torch.Tensor:
        """Contract the time axis: ``(L, *G) -> (n_t, *G)``."""
        matrix = self.time.matrix(time_order, field.device, field.dtype)
        return torch.tensordot(matrix, field, dims=([1], [0]))

    def integrate_space(self, field: torch.Tensor, space_orders: Sequence[int]) -> torch.Tensor:
        """Contract the spatial axes of ``(n_t, *G)`` (a time-contracted field): ``-> (n,)``."""
        result = field
        for axis, (factor, order) in enumerate(zip(self.spatial, space_orders)):
            matrix = factor.matrix(order, field.device, field.dtype)
            # contract grid axis (1 + axis) and put the query axis back in its place
            result = torch.movedim(torch.tensordot(result, matrix, dims=([1 + axis], [1])), -1, 1 + axis)
        return result.reshape(-1)

    def time_index(self) -> torch.Tensor:
        """``(n,)`` index of the time centre of each row of :meth:`integrate` (rows are time-major)."""
        spatial = math.prod(axis.count for axis in self.spatial)
        centres = torch.tensor(self.time.centers, dtype=torch.long)
        return centres.repeat_interleave(spatial)

    def describe(self) -> dict:
        return {"m_x": [a.m for a in self.spatial], "p_x": self.spatial[0].p, "s_x": self.spatial[0].stride,
                "m_t": self.time.m, "p_t": self.time.p, "s_t": self.time.stride, "n": self.count}

    def __repr__(self) -> str:
        return f"TestFunctions({self.describe()})"


def changepoint_support(density: torch.Tensor, axis: int, p: int, tau: float = 2.0, min_points: int = 3,
                        max_points: Optional[int] = None) -> int:
    """Support half-width ``m`` along ``axis`` of ``density`` (any shape) by the changepoint rule (module doc)."""
    size = density.shape[axis]
    field = density.movedim(axis, -1).reshape(-1, size).double()
    magnitude = torch.fft.rfft(field, dim=-1).abs().mean(0)
    cumulative = torch.cumsum(magnitude, 0).cpu()  # a few hundred numbers: fit on the host
    k_star = _two_segment_changepoint(cumulative)
    m = math.ceil(tau * math.sqrt(2 * p) * size / (2 * math.pi * max(k_star, 1)))
    upper = size // 4 if max_points is None else max_points
    return int(min(max(m, min_points), max(upper, min_points)))


def _two_segment_changepoint(curve: torch.Tensor) -> int:
    """Index ``k`` splitting ``curve`` into two straight segments ``[0, k)`` and ``[k - 1, n)`` with least
    squared residual (every split at once, from prefix sums of the least-squares normal equations)."""
    n = curve.numel()
    if n < 4:
        return max(n - 1, 1)
    y = curve.double()
    x = torch.arange(n, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    sums = [torch.cat((zero, torch.cumsum(v, 0))) for v in (torch.ones_like(x), x, y, x * x, x * y, y * y)]
    splits = torch.arange(2, n - 1)
    left = _line_residuals(sums, torch.zeros_like(splits), splits)
    right = _line_residuals(sums, splits - 1, torch.full_like(splits, n))
    return int(splits[torch.argmin(left + right)])


def _line_residuals(sums, start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Residual sums of squares of least-squares lines through the points ``[start, stop)`` (vectors of ranges)."""
    count, sx, sy, sxx, sxy, syy = (s[stop] - s[start] for s in sums)
    var_x = sxx - sx * sx / count
    cov = sxy - sx * sy / count
    var_y = syy - sy * sy / count
    return (var_y - torch.where(var_x > 0, cov * cov / var_x.clamp_min(1e-300), torch.zeros_like(cov))).clamp_min(0)
