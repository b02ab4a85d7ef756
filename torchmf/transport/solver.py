r"""The user-facing transport map: :func:`transport_map` and the reusable :class:`TransportSolver`."""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .._validation import check_choice, check_int, check_points, check_positive
from .atoms import site_transport
from .divergence import default_blur, w2_divergence
from .exact import assignment_map, sorted_map
from .exact_weighted import weighted_assignment_map, weighted_sorted_map
from .geomloss_backend import geomloss_map
from .kernels import DenseKernel, centred
from .multiscale import SELF_TRUNCATE, multiscale_solve, truncated_kernel
from .online import online_solve
from .routing import ALIASES, METHODS, check_tiling, resolve_method
from .sinkhorn import SinkhornReport, SinkhornSettings, symmetric_loop
from .weights import check_weights, drop_massless, log_weights

__all__ = ["transport_map", "TransportSolver", "default_blur", "w2_sinkhorn", "UnconvergedTransportWarning",
           "TransportNotConverged", "DEFAULT_SETTINGS"]

DEFAULT_SETTINGS = SinkhornSettings()
_ON_UNCONVERGED = ("warn", "raise", "ignore")
_WARM_FRACTION = 0.25   # a warm start may spend this share of max_iterations before it is redone cold
_WARM_TOLERANCE = 0.3   # a warm start stops at this fraction of the tolerance (see TransportSolver._warm_settings)
_MASSLESS_SOURCE = "T(x_i) = sum_j P_ij y_j / a_i is 0/0 at a particle of weight 0: drop it, x[weights > 0]"


class UnconvergedTransportWarning(RuntimeWarning):
    """A Sinkhorn solve stopped at ``max_iterations`` above its tolerance."""


class TransportNotConverged(RuntimeError):
    """Raised instead of the warning with ``on_unconverged="raise"``."""


def transport_map(x: torch.Tensor, y: torch.Tensor, method: str = "auto", blur: Optional[float] = None,
                  scaling: float = 0.7, debias: bool = True, tolerance: float = DEFAULT_SETTINGS.tolerance,
                  max_iterations: int = DEFAULT_SETTINGS.max_iterations, omega: float = DEFAULT_SETTINGS.omega,
                  on_unconverged: str = "warn", tile_entries: Optional[int] = None,
                  memory_budget: Optional[int] = None, source_weights=None, target_weights=None) -> torch.Tensor:
    r"""Optimal transport map from the measure :math:`\sum_i a_i \delta_{x_i}` to
    :math:`\sum_j b_j \delta_{y_j}` (uniform weights by default).

    The map is the barycentric projection of the optimal plan, :math:`T(x_i) = \sum_j \pi_{ij} y_j / a_i`.
    For uniform clouds of equal size the exact plan is a permutation and :math:`T(x_i)` is the
    partner of :math:`x_i`; with weights or unequal sizes (``N != M``) a particle's mass may be
    split between several targets and :math:`T(x_i)` is their weighted mean (exact: POT's
    ``ot.emd(a, b, cost)``; in 1-D the monotone coupling of the quantile functions).

    Arguments:
        x: source particles ``(..., N, d)``.
        y: target particles ``(..., M, d)`` (same batch dimensions and d; ``M`` may differ from ``N``).
        method: see the table of :mod:`torchmf.transport` (``"auto"``, ``"sort"``, ``"exact"``,
            ``"sinkhorn"``, ``"sinkhorn-geomloss"``, ``"sinkhorn-keops"``, ``"sinkhorn-online"``
            (alias ``"sinkhorn-dense"``), ``"sinkhorn-multiscale"``).
        blur: Sinkhorn length scale :math:`\sqrt\varepsilon` (default :func:`default_blur`).
        scaling: epsilon-annealing ratio per level in (0, 1) (blur shrinks by this factor).
        debias: subtract the self-transport of ``x`` (Sinkhorn methods only).
        tolerance: the torch Sinkhorn backends stop when the sup-norm change of the dual potential,
            in units of :math:`\varepsilon`, falls below this (the largest relative error of a
            column marginal of the plan); the rows are exact.
        max_iterations: cap on the iterations at the final epsilon.
        omega: over-relaxation factor in (0, 2) (1 is plain Sinkhorn).
        on_unconverged: ``"warn"`` (:class:`UnconvergedTransportWarning`), ``"raise"``
            (:class:`TransportNotConverged`) or ``"ignore"`` when a solve stops at ``max_iterations``.
        tile_entries: entries per tile of the online backend (default: from ``memory_budget``).
        memory_budget: bytes the online backend's tiles may use (default: 1/4 of the free
            memory of ``x``'s device). Too small for one row tile: ``ValueError``.
        source_weights: ``a``, ``(N,)`` or ``(..., N)``, finite and positive (a source particle of
            weight 0 has no defined image: drop it); ``None`` is uniform.
        target_weights: ``b``, ``(M,)`` or ``(..., M)``, finite and nonnegative with a positive sum
            (particles of weight 0 are ignored); ``None`` is uniform.
            Both are normalised to sum to 1 over each cloud (counts or intensities are fine);
            anything else is a ``ValueError`` naming the argument. Weighted solves start cold
            (no warm start).

    Returns:
        ``(..., N, d)``: :math:`T(x_i)`, on ``x``'s device and dtype.
    """
    solver = TransportSolver(method, blur=blur, scaling=scaling, debias=debias, tolerance=tolerance,
                             max_iterations=max_iterations, omega=omega, on_unconverged=on_unconverged,
                             tile_entries=tile_entries, memory_budget=memory_budget)
    return solver(x, y, warm_start=False, source_weights=source_weights, target_weights=target_weights)


class TransportSolver:
    """Reusable transport-map solver with warm starts (see :func:`transport_map` for arguments).

    ``solver(x, y)`` returns the map ``(..., N, d)``; ``solver(x, y, source_weights=a,
    target_weights=b)`` transports weighted clouds of any sizes (see :func:`transport_map`). For
    the torch Sinkhorn backends the dual potentials of the last unbatched, unweighted solve between
    clouds of equal size are kept; the next such call with the same ``N`` starts from
    them (``warm_start=True``, the default) and runs only the final epsilon, until the largest
    relative marginal error of its plan is below 0.3 x ``tolerance`` (a warm start's leftover error
    leans towards the previous target; at the cold tolerance it biased LOT's centred differences);
    a warm start that has not converged within the iterations of the last cold solve (or a
    quarter of ``max_iterations``; the clouds moved by many blurs) is redone cold, and later calls
    start cold. ``reset()`` forgets all of it.

    Diagnostics of the last call: ``last_report`` (:class:`~torchmf.transport.SinkhornReport`:
    iterations, achieved error, tolerance, converged; for a batch, the worst pair), and
    ``last_iterations``. The exact and geomloss backends report ``None``.
    """

    def __init__(self, method: str = "auto", blur: Optional[float] = None, scaling: float = 0.7,
                 debias: bool = True, tolerance: float = DEFAULT_SETTINGS.tolerance,
                 max_iterations: int = DEFAULT_SETTINGS.max_iterations, omega: float = DEFAULT_SETTINGS.omega,
                 on_unconverged: str = "warn", tile_entries: Optional[int] = None,
                 memory_budget: Optional[int] = None):
        self.method = ALIASES.get(check_choice("method", method, METHODS), method)
        self.tiling = check_tiling(tile_entries, memory_budget)
        self.blur = None if blur is None else check_positive("blur", blur)
        self.scaling = _open_interval("scaling", scaling, 0.0, 1.0)
        if not isinstance(debias, bool):
            raise TypeError(f"debias: expected a bool, but got {type(debias).__name__}")
        self.debias = debias
        self.settings = DEFAULT_SETTINGS._replace(
            tolerance=check_positive("tolerance", tolerance),
            max_iterations=check_int("max_iterations", max_iterations, minimum=1),
            omega=_open_interval("omega", omega, 0.0, 2.0))
        self.on_unconverged = check_choice("on_unconverged", on_unconverged, _ON_UNCONVERGED)
        self.last_report: Optional[SinkhornReport] = None
        self._potentials = None
        self._self_cache = None
        self._cold_iterations = 0
        self._warm_failed = False

    @property
    def tolerance(self) -> float:
        return self.settings.tolerance

    @property
    def max_iterations(self) -> int:
        return self.settings.max_iterations

    @property
    def last_iterations(self) -> int:
        return 0 if self.last_report is None else self.last_report.iterations

    def reset(self) -> None:
        self._potentials = None
        self._self_cache = None
        self._cold_iterations = 0
        self._warm_failed = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor, warm_start: bool = True, source_weights=None,
                 target_weights=None) -> torch.Tensor:
        """The map ``(..., N, d)`` from ``x (..., N, d)`` to ``y (..., M, d)`` (weights: see
        :func:`transport_map`)."""
        x, y = _check_clouds(x, y)
        source_weights = check_weights("source_weights", source_weights, x, positive=_MASSLESS_SOURCE)
        target_weights = check_weights("target_weights", target_weights, y)
        if self.method in ("auto", "exact") and x.dim() == 2 and x.shape[-1] > 1:
            # many repeated points (lattices, pixels): the exact problem between the distinct sites,
            # at any N (10,200 points on 60 and 30 sites: no certificate after 123 s before)
            target, target_mass = drop_massless(y, target_weights)
            solved = site_transport(x, target, source_weights, target_mass)
            if solved is not None:
                self.last_report = None
                return solved[0]
        # uniform clouds of equal size: the permutation solvers and warm starts, unchanged
        uniform = source_weights is None and target_weights is None and x.shape[-2] == y.shape[-2]
        method = resolve_method(self.method, max(x.shape[-2], y.shape[-2]), x.shape[-1], device=x.device,
                                element_size=x.element_size(), tiling=self.tiling, weighted=not uniform)
        batch = x.shape[:-2]
        flat_x, flat_y = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
        flat_a = _flat_weights(source_weights, flat_x)
        flat_b = _flat_weights(target_weights, flat_y)
        if flat_x.shape[0] > 1 or not uniform:
            self._potentials = None  # warm starts are for one sequence of unbatched uniform clouds
        self.last_report = None
        warm = warm_start and flat_x.shape[0] == 1 and uniform
        maps = [self._one(*pair, method, warm) for pair in zip(flat_x, flat_y, flat_a, flat_b)]
        return torch.stack(maps).reshape(*batch, *x.shape[-2:])

    # -- one pair of clouds (N, d), (M, d) with weights (N,), (M,) or None -------------------------
    def _one(self, x, y, a, b, method, warm):
        y, b = drop_massless(y, b)
        uniform = a is None and b is None and x.shape[0] == y.shape[0]
        if method in ("sort", "exact") and not uniform:
            a = torch.exp(log_weights(a, x)) if a is None else a
            b = torch.exp(log_weights(b, y)) if b is None else b
            return (weighted_sorted_map if method == "sort" else weighted_assignment_map)(x, y, a, b)
        if method == "sort":
            return sorted_map(x, y)
        if method == "exact":
            return assignment_map(x, y)
        blur = self.blur if self.blur is not None else default_blur(x, y)
        if method in ("sinkhorn-geomloss", "sinkhorn-keops"):
            backend = "tensorized" if method == "sinkhorn-geomloss" else "keops"
            mapped = geomloss_map(x, y, blur, self.scaling, backend, self.tiling, a, b)
            return mapped if not self.debias else mapped - self._self_map(x, blur, method, a) + x
        eps = blur ** 2
        work_x, work_y, shift = centred(x, y)
        a_log = None if a is None else a.log()
        b_log = log_weights(b, work_y)
        previous = self._warm_start(x, y, shift, method) if warm and not self._warm_failed else None
        if previous is not None:
            kernel, f, g, report = self._solve(method, work_x, work_y, eps, previous, self._warm_settings())
            if not report.converged:  # the clouds moved too far for the last potentials: solve cold
                self._warm_failed = True
                kernel, f, g, cold = self._solve(method, work_x, work_y, eps, None, self.settings)
                self._cold_iterations = cold.iterations
                report = report + cold
        else:
            kernel, f, g, report = self._solve(method, work_x, work_y, eps, None, self.settings, a_log, b_log)
            if uniform:
                self._cold_iterations = report.iterations
        self._record(report)
        mapped = kernel.barycentre(eps, b_log + g / eps, work_y) + shift
        if uniform:
            self._potentials = (method, f, g, mapped, y)
        if self.debias:
            mapped = mapped - self._self_map(x, blur, method, a) + x
        return mapped

    def _warm_settings(self):
        """How far a warm start iterates: to ``_WARM_TOLERANCE`` x the tolerance, on the marginal error.

        The stopping error is the largest relative column-marginal error of the plan; it falls slowly
        from a warm start, and what is left of it points back to the previous target's plan. At the
        cold tolerance that bias did not cancel in LOT's centred differences (warm maps 5-10% of a lag's
        displacement from the cold ones, the velocity 2.6x the cold one's error on a gradient flow);
        at 0.3 x the tolerance the velocity was within 1% of the cold solves' (measured in
        tests/test_transport_warm.py's flows). A warm start that would cost more than the last cold
        solve is stopped there and redone cold, and the solver starts cold from then on (until
        ``reset()``): the clouds move by too many blurs between calls for a warm start to pay."""
        cap = int(_WARM_FRACTION * self.settings.max_iterations)
        if self._cold_iterations:
            cap = min(cap, self._cold_iterations)
        return self.settings._replace(tolerance=_WARM_TOLERANCE * self.settings.tolerance, max_iterations=max(1, cap))

    def _solve(self, method, work_x, work_y, eps, previous, settings, a_log=None, b_log=None):
        if method == "sinkhorn-online":
            return online_solve(work_x, work_y, eps, self.scaling, settings, previous, self.tiling, a_log, b_log)
        return multiscale_solve(work_x, work_y, eps, self.scaling, settings, previous, a_log, b_log)

    def _record(self, report: SinkhornReport) -> None:
        """Keep the worst report of a batch; warn or raise on an unconverged solve."""
        if self.last_report is None or report.error > self.last_report.error:
            self.last_report = report
        if report.converged or self.on_unconverged == "ignore":
            return
        # fewer iterations than the cap: the loop gave up because the error stopped improving
        stalled = report.iterations < self.settings.max_iterations
        cause = "the error stopped improving" if stalled else f"max_iterations = {self.settings.max_iterations} reached"
        advice = "raise the blur or the tolerance" if stalled else "raise max_iterations or the blur"
        message = (f"Sinkhorn stopped unconverged after {report.iterations} iterations ({cause}): potential "
                   f"change {report.error:.2e} eps > tolerance {report.tolerance:.1e}; {advice}")
        if self.on_unconverged == "raise":
            raise TransportNotConverged(message)
        warnings.warn(message, UnconvergedTransportWarning, stacklevel=4)

    def _warm_start(self, x, y, shift, method):
        """Potentials (and, for the sparse kernel, targets and their uncertainty) of the last solve."""
        if self._potentials is None or self._potentials[0] != method or self._potentials[1].shape[0] != x.shape[0]:
            return None
        _, f, g, mapped, old_y = self._potentials
        if method == "sinkhorn-online":
            return f, g
        # the targets moved with their particles: widen the kernel by (a few times) their typical move,
        # plus two blurs for the error of the old targets themselves (without it the warm map was
        # 2.3% away from the cold one on a mixture to a ring)
        moved = (y - old_y).pow(2).sum(1)
        blur = self.blur if self.blur is not None else default_blur(x, y)
        margin = 3.0 * float(moved.mean().sqrt()) + 2.0 * blur
        return f, g, mapped - shift, margin

    def _self_map(self, x, blur, method, a=None):
        """Entropic self-transport of ``x`` with weights ``a`` (``None``: uniform), cached while
        ``x`` and ``a`` are unchanged: LOT reuses one source."""
        cache = self._self_cache
        if cache is not None and cache[0] is x and cache[1] == (blur, method) and _same_weights(cache[3], a):
            return cache[2]
        if method in ("sinkhorn-geomloss", "sinkhorn-keops"):
            backend = "tensorized" if method == "sinkhorn-geomloss" else "keops"
            mapped = geomloss_map(x, x, blur, self.scaling, backend, self.tiling, a, a)
        else:
            # the self-transport plan sits on the diagonal: no annealing, the symmetric update
            work, _, shift = centred(x, x)
            eps, a_log = blur ** 2, log_weights(a, work)
            if method == "sinkhorn-online":
                kernel = DenseKernel(work, work, self.tiling)
            else:
                kernel = truncated_kernel(work, work, work, math.sqrt(2 * SELF_TRUNCATE * eps))
            f, report = symmetric_loop(kernel, a_log, eps, self.settings)
            self._record(report)
            mapped = kernel.barycentre(eps, a_log + f / eps, work) + shift
        self._self_cache = (x, (blur, method), mapped, a)
        return mapped


def _same_weights(cached, weights):
    if cached is None or weights is None:
        return cached is None and weights is None
    return cached.shape == weights.shape and bool(torch.equal(cached, weights))


def _flat_weights(weights, flat_points):
    """One weight vector (or ``None``) per cloud of ``flat_points (B, N, d)``."""
    if weights is None:
        return [None] * flat_points.shape[0]
    return list(weights.reshape(flat_points.shape[0], flat_points.shape[1]))


def _open_interval(name, value, lower, upper):
    value = check_positive(name, value) if lower == 0 else value
    if not lower < value < upper:
        raise ValueError(f"{name}: expected a number in ({lower:g}, {upper:g}), but got {value}")
    return float(value)


def _check_clouds(x, y):
    x = check_points("x", x)
    y = check_points("y", y)
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(f"y: expected dimension d = {x.shape[-1]} like x, but got shape {tuple(y.shape)}")
    if y.shape[:-2] != x.shape[:-2]:
        raise ValueError(f"y: expected batch dimensions {tuple(x.shape[:-2])} like x, but got {tuple(y.shape[:-2])}")
    if y.device != x.device or y.dtype != x.dtype:
        raise ValueError(f"y: expected device {x.device} and dtype {x.dtype} like x, but got {y.device}, {y.dtype}")
    return x, y


def w2_sinkhorn(x: torch.Tensor, y: torch.Tensor, blur: Optional[float] = None,
                settings: SinkhornSettings = DEFAULT_SETTINGS) -> torch.Tensor:
    r"""W2 between the uniform clouds ``x (N, d)`` and ``y (M, d)`` from the debiased Sinkhorn
    divergence, the blur annealed below the distance (:func:`~torchmf.transport.divergence.w2_divergence`),
    a 0-d tensor on ``x``'s device and dtype. Warns when a solve is unconverged, and
    (:class:`~torchmf.transport.divergence.CloseToBlurWarning`) when the result is within a few blurs."""
    value, _, report = w2_divergence(x, y, blur, settings)
    if not report.converged:
        warnings.warn(f"w2: Sinkhorn stopped unconverged after {report.iterations} iterations (potential change "
                      f"{report.error:.2e} eps > {report.tolerance:.1e})", UnconvergedTransportWarning, stacklevel=3)
    return torch.tensor(value, dtype=x.dtype, device=x.device)
