r"""Optimal transport maps between equal-size uniform point clouds.

:func:`transport_map` returns :math:`T(x_i)` for every source particle, where :math:`T` pushes the
uniform measure on ``x`` to the uniform measure on ``y`` (cost :math:`|x - y|^2`). The backend is
chosen by the single ``method`` argument:

========================  ====================================================================
``"sort"``                exact in 1-D (monotone rearrangement), any N
``"exact"``               optimal assignment (scipy ``linear_sum_assignment``), N up to ~5000
``"sinkhorn-geomloss"``   geomloss tensorized Sinkhorn potentials, barycentric projection
``"sinkhorn-keops"``      geomloss with the KeOps ``"multiscale"`` (d <= 3) or ``"online"``
                          backend; only when ``pykeops`` can be imported (imported lazily)
``"sinkhorn-online"``     torch log-domain Sinkhorn that never forms the N x M cost matrix: the
                          log-sum-exp runs over row tiles sized from the free memory (see
                          :func:`tile_rows`); CPU and CUDA; supports warm starts. In
                          d <= 3 a cold start anneals the coarse scales on grid clusters
                          first. ``"sinkhorn-dense"`` is an accepted alias
``"sinkhorn-multiscale"`` torch coarse-to-fine Sinkhorn: grid clusters solved densely, then a
                          sparse (truncated) kernel around the predicted targets; d <= 3
``"sinkhorn"``            the fastest measured backend for the size, dimension and device (see
                          :func:`resolve_method`); never pykeops
``"auto"``                ``sort`` in 1-D, ``exact`` for N <= 1000, ``sinkhorn`` otherwise
========================  ====================================================================

:func:`sinkhorn_potentials` exposes the online solver itself: geomloss' epsilon-scaling loop
(symmetric updates, final extrapolation, optional debiasing) with the tiled log-sum-exp, returning
the dual potentials; :func:`barycentric_map` turns them into the map, tile by tile.

Sinkhorn maps are barycentric projections of the entropic plan,
:math:`T_\varepsilon(x_i) = \sum_j \pi_{ij} y_j / a_i`, with :math:`\varepsilon = \text{blur}^2`
for the cost :math:`|x-y|^2/2` (geomloss' convention). The entropic plan blurs: :math:`T_\varepsilon`
is pulled towards local means. With ``debias=True`` the self-transport of ``x`` is subtracted,
:math:`T(x) = x + T^{x\to y}_\varepsilon(x) - T^{x\to x}_\varepsilon(x)`; this is the displacement
:math:`-\nabla_x S_\varepsilon / a` of the debiased Sinkhorn divergence
:math:`S_\varepsilon = OT_\varepsilon(a,b) - \tfrac12 OT_\varepsilon(a,a) - \tfrac12 OT_\varepsilon(b,b)`
and removes the first-order blur bias. (In a difference of two maps from the same source, such as
the centred differences of :mod:`torchmf.lot`, the correction cancels exactly.)

:class:`TransportSolver` keeps the dual potentials of its last solve and starts the next one
from them (warm start): consecutive snapshots of a particle system carry the same particle labels,
so the potentials of particle ``j`` at one snapshot are a good guess at the next, and the
epsilon-annealing can be skipped. A warm start whose marginal error is still above 4x the
tolerance after ``max_iterations`` (the clouds moved by many blurs) is redone from scratch.

Host synchronisation: the torch solvers read the marginal error once per iteration at the final
epsilon (to stop); the annealing levels, and :func:`sinkhorn_potentials` altogether, read nothing
but the clouds' diameter, once. pykeops is imported only by ``method="sinkhorn-keops"``.

Shapes: ``x`` ``(..., N, d)``, ``y`` ``(..., N, d)`` with equal batch dimensions; the map has
``x``'s shape, device and dtype.
"""
from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple, Optional, Tuple

import torch

from ._validation import check_choice, check_int, check_points, check_positive, check_tensor

__all__ = ["transport_map", "TransportSolver", "METHODS", "default_blur", "sinkhorn_potentials", "barycentric_map",
           "SinkhornPotentials", "tile_rows", "free_memory", "resolve_method", "affine_gaussian_case"]

METHODS = ("auto", "sort", "exact", "sinkhorn", "sinkhorn-geomloss", "sinkhorn-keops", "sinkhorn-online",
           "sinkhorn-dense", "sinkhorn-multiscale")
_ALIASES = {"sinkhorn-dense": "sinkhorn-online"}
_EXACT_LIMIT = 1000          # "auto" uses the assignment up to this size (same rule as metrics.w2)
_EXACT_MAX = 5000            # an N x N float64 cost matrix and a cubic solver beyond this is impractical
_GEOMLOSS_LIMIT = 2.5e7      # N * M entries the geomloss tensorized backend may hold at once (CUDA)
_CPU_ONLINE_LIMIT = 30_000 ** 2  # "sinkhorn" on CPU, d <= 3: online up to N = 30,000, multiscale beyond
_MEMORY_FRACTION = 0.25     # the online backend's tiles use at most this share of the free memory
_TENSORIZED_FRACTION = 0.125  # geomloss' tensorized backend only when N x M fits in this share of it
_TILE_COPIES = 2            # live tile-sized buffers per row tile (scores, and a temporary of the matmul)
_CPU_TILE_ENTRIES = 2 ** 18  # CPU tiles stop here: a 1 MB tile stays in L2 through its five passes
#                              (2**22 entries ran 2.5x slower per soft-min at N = 1e4, measured)
_RESTART_FACTOR = 4.0       # a warm start whose marginal error stays above 4 x tolerance is redone cold
_FALLBACK_MEMORY = 2 ** 31   # bytes assumed free on CPU when /proc/meminfo cannot be read
_DENSE_LIMIT = 600          # the multiscale recursion solves densely below this many points
_TRUNCATE = 6.0             # sparse kernel keeps pairs with pi_ij / (a_i b_j) >= exp(-_TRUNCATE)
_CLUSTER_SIZE = 6.0          # particles per coarse grid cell in the multiscale backend
_MARGIN = 0.25               # error of the coarse targets, in cells, allowed for in the fine kernel


def transport_map(x: torch.Tensor, y: torch.Tensor, method: str = "auto", blur: Optional[float] = None,
                  scaling: float = 0.7, debias: bool = True, tile_entries: Optional[int] = None,
                  memory_budget: Optional[int] = None) -> torch.Tensor:
    r"""Optimal transport map from the uniform measure on ``x`` to the uniform measure on ``y``.

    Arguments:
        x: source particles ``(..., N, d)``.
        y: target particles ``(..., N, d)`` (same batch dimensions, N and d).
        method: see the module table (``"auto"``, ``"sort"``, ``"exact"``, ``"sinkhorn"``,
            ``"sinkhorn-geomloss"``, ``"sinkhorn-keops"``, ``"sinkhorn-online"`` (alias
            ``"sinkhorn-dense"``), ``"sinkhorn-multiscale"``).
        blur: Sinkhorn length scale :math:`\sqrt\varepsilon` (default :func:`default_blur`).
        scaling: epsilon-annealing ratio per level in (0, 1) (blur shrinks by this factor).
        debias: subtract the self-transport of ``x`` (Sinkhorn methods only).
        tile_entries: entries per tile of the online backend (default: from ``memory_budget``).
        memory_budget: bytes the online backend's tiles may use (default: 1/4 of the free
            memory of ``x``'s device). Too small for one row tile: ``ValueError``.

    Returns:
        ``(..., N, d)``: :math:`T(x_i)`, on ``x``'s device and dtype.
    """
    solver = TransportSolver(method, blur=blur, scaling=scaling, debias=debias, tile_entries=tile_entries,
                             memory_budget=memory_budget)
    return solver(x, y, warm_start=False)


def affine_gaussian_case(n: int, seed: int = 0, device=None, dtype: torch.dtype = torch.float32):
    """A 2-D case whose exact discrete map is known: ``(x, y, exact)``, each ``(n, 2)``.

    ``x ~ N(0, I_2)`` and ``y`` is the shuffled image of ``x`` under :math:`T(x) = b + S x` with
    :math:`S` symmetric positive definite. :math:`T` is the gradient of a convex function, so it is
    the optimal map between the two empirical measures themselves and ``exact = T(x)`` row by row
    (independent samples of :math:`N(b, S^2)` would add a sampling discrepancy of several percent).
    Drawn in float64 on the CPU from ``seed``, then cast to ``dtype`` and moved to ``device``.
    """
    n = check_int("n", n, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    stretch = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=torch.float64)
    exact = torch.tensor([2.0, -1.0], dtype=torch.float64) + x @ stretch
    y = exact[torch.randperm(n, generator=generator)]
    return tuple(tensor.to(device=device, dtype=dtype) for tensor in (x, y, exact))


def default_blur(x: torch.Tensor, y: torch.Tensor) -> float:
    """5% of the largest per-axis standard deviation of the two clouds (``(N, d)`` each)."""
    spread = float(torch.cat([x, y], dim=-2).std(dim=-2).max())
    return 0.05 * spread if spread > 0 else 1e-3


class TransportSolver:
    """Reusable transport-map solver with warm starts (see :func:`transport_map` for arguments).

    ``solver(x, y)`` returns the map ``(..., N, d)``. For the torch Sinkhorn backends the dual
    potentials of the last unbatched solve are kept; the next call with the same ``N`` starts from
    them (``warm_start=True``, the default), skipping the annealing. ``reset()`` forgets them.
    ``last_iterations`` counts the Sinkhorn iterations of the last solve (diagnostics).
    """

    def __init__(self, method: str = "auto", blur: Optional[float] = None, scaling: float = 0.7,
                 debias: bool = True, tolerance: float = 0.05, max_iterations: int = 20,
                 tile_entries: Optional[int] = None, memory_budget: Optional[int] = None):
        self.method = _ALIASES.get(check_choice("method", method, METHODS), method)
        self.tiling = _check_tiling(tile_entries, memory_budget)
        self.blur = None if blur is None else check_positive("blur", blur)
        self.scaling = check_positive("scaling", scaling)
        if not self.scaling < 1:
            raise ValueError(f"scaling: expected a number in (0, 1), but got {scaling}")
        if not isinstance(debias, bool):
            raise TypeError(f"debias: expected a bool, but got {type(debias).__name__}")
        self.debias = debias
        self.tolerance = check_positive("tolerance", tolerance)
        self.max_iterations = int(max_iterations)
        self.last_iterations = 0
        self._potentials = None
        self._self_cache = None

    def reset(self) -> None:
        self._potentials = None
        self._self_cache = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, warm_start: bool = True) -> torch.Tensor:
        x, y = _check_clouds(x, y)
        method = resolve_method(self.method, x.shape[-2], x.shape[-1], device=x.device,
                                element_size=x.element_size(), tiling=self.tiling)
        batch = x.shape[:-2]
        flat_x, flat_y = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
        if flat_x.shape[0] > 1:
            self._potentials = None  # warm starts are for one sequence of unbatched clouds
        maps = [self._one(a, b, method, warm_start and flat_x.shape[0] == 1) for a, b in zip(flat_x, flat_y)]
        return torch.stack(maps).reshape(*batch, *x.shape[-2:])

    # -- one pair of clouds (N, d) ----------------------------------------------------------------
    def _one(self, x, y, method, warm):
        if method == "sort":
            return _sorted_map(x, y)
        if method == "exact":
            return _assignment_map(x, y)
        blur = self.blur if self.blur is not None else default_blur(x, y)
        if method in ("sinkhorn-geomloss", "sinkhorn-keops"):
            mapped = _geomloss_map(x, y, blur, self.scaling, "tensorized" if method == "sinkhorn-geomloss" else "keops",
                                   self.tiling)
            return mapped if not self.debias else mapped - self._self_map(x, blur, method) + x
        eps = blur ** 2
        work_x, work_y, shift = _centred(x, y)
        previous = self._warm_start(x, y, shift, method) if warm else None
        kernel, f, g, iterations = self._solve(method, work_x, work_y, eps, previous)
        if previous is not None and kernel.marginal_error > _RESTART_FACTOR * self.tolerance:
            # the clouds moved too far for the last potentials (no annealing from them): solve cold.
            # Small moves stop near the tolerance (measured 0.05); a translation by 10 blurs stalls at 0.55
            kernel, f, g, cold_iterations = self._solve(method, work_x, work_y, eps, None)
            iterations += cold_iterations
        self.last_iterations = iterations
        mapped = kernel.barycentre(eps, _uniform_log(work_y) + g / eps, work_y) + shift
        self._potentials = (method, f, g, mapped, y)
        if self.debias:
            mapped = mapped - self._self_map(x, blur, method) + x
        return mapped

    def _solve(self, method, work_x, work_y, eps, previous):
        if method == "sinkhorn-online":
            return _online_solve(work_x, work_y, eps, self.scaling, self.tolerance, self.max_iterations, previous,
                                 self.tiling)
        return _multiscale_solve(work_x, work_y, eps, self.scaling, self.tolerance, self.max_iterations, previous)

    def _warm_start(self, x, y, shift, method):
        """Potentials (and, for the sparse kernel, targets and their uncertainty) of the last solve."""
        if self._potentials is None or self._potentials[0] != method or self._potentials[1].shape[0] != x.shape[0]:
            return None
        _, f, g, mapped, old_y = self._potentials
        if method == "sinkhorn-online":
            return f, g
        # the targets moved with their particles: widen the kernel by (a few times) their typical move
        moved = (y - old_y).pow(2).sum(1)
        margin = 3.0 * float(moved.mean().sqrt())
        return f, g, mapped - shift, margin

    def _self_map(self, x, blur, method):
        """Entropic self-transport of ``x`` (cached while ``x`` is unchanged: LOT reuses one source)."""
        cache = self._self_cache
        if cache is not None and cache[0] is x and cache[1] == (blur, method):
            return cache[2]
        if method in ("sinkhorn-geomloss", "sinkhorn-keops"):
            mapped = _geomloss_map(x, x, blur, self.scaling, "tensorized" if method == "sinkhorn-geomloss" else "keops",
                                   self.tiling)
        else:
            # the self-transport plan sits on the diagonal: start there, no annealing needed
            work, _, shift = _centred(x, x)
            zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            if method == "sinkhorn-online":
                kernel, _, g, _ = _online_solve(work, work, blur ** 2, self.scaling, self.tolerance,
                                                self.max_iterations, (zero, zero), self.tiling)
            else:
                kernel, _, g, _ = _multiscale_solve(work, work, blur ** 2, self.scaling, self.tolerance,
                                                    self.max_iterations, (zero, zero, work, 0.0))
            mapped = kernel.barycentre(blur ** 2, _uniform_log(work) + g / blur ** 2, work) + shift
        self._self_cache = (x, (blur, method), mapped)
        return mapped


def resolve_method(method: str, n: int, dim: int, device=None, element_size: int = 4, tiling=(None, None)) -> str:
    """The concrete backend that ``method`` means for ``n`` particles in dimension ``dim`` on ``device``.

    ``"sinkhorn"`` (rule measured on the 2-core CPU, docs/benchmarks.md "Scale"):

    - CPU: the online backend up to ``n = 30,000``, then the multiscale backend for ``d <= 3``
      (2-D affine case, one thread: online 0.20 s, 1.22 s, 11.2 s at n = 3000, 1e4, 3e4 against
      multiscale 0.33 s, 1.51 s, 18.8 s; the online solve costs O(n^2) per soft-min, the
      multiscale one about O(n), so the latter wins beyond; geomloss' tensorized solver is never
      the fastest); online for ``d > 3``.
    - CUDA: geomloss' tensorized solver while the ``n x n`` matrix is small (``n^2 <= 2.5e7``)
      and takes less than 1/8 of the free memory (or of ``memory_budget``; the issue measured
      0.08 s at n = 1e4 on an H100); the online backend beyond.

    pykeops is never chosen here: ask for ``"sinkhorn-keops"`` explicitly.
    """
    method = _ALIASES.get(method, method)
    if method == "auto":
        if dim == 1:
            return "sort"
        method = "exact" if n <= _EXACT_LIMIT else "sinkhorn"
    if method == "sinkhorn":
        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type == "cpu":
            return "sinkhorn-multiscale" if dim <= 3 and n * n > _CPU_ONLINE_LIMIT else "sinkhorn-online"
        budget = tiling[1] if tiling[1] is not None else free_memory(device)
        if n * n <= _GEOMLOSS_LIMIT and n * n * element_size < _TENSORIZED_FRACTION * budget:
            return "sinkhorn-geomloss"
        return "sinkhorn-online"
    if method == "sort" and dim != 1:
        raise ValueError(f"method: 'sort' is exact only in 1-D, but the clouds have d = {dim}")
    if method == "exact" and n > _EXACT_MAX:
        raise ValueError(f"method: 'exact' is limited to N <= {_EXACT_MAX}, but got N = {n}; use 'sinkhorn'")
    if method == "sinkhorn-keops" and not keops_available():
        raise ValueError("method: 'sinkhorn-keops' needs pykeops, which is not installed; use 'sinkhorn'")
    if method == "sinkhorn-multiscale" and dim > 3:
        raise ValueError(f"method: 'sinkhorn-multiscale' clusters on a grid and needs d <= 3, but got d = {dim}")
    return method


def keops_available() -> bool:
    """Whether pykeops could be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("pykeops") is not None
    except ValueError:  # sys.modules["pykeops"] = None (made unimportable on purpose)
        return False


def free_memory(device) -> int:
    """Bytes free on ``device``: on CUDA ``torch.cuda.mem_get_info`` plus what torch's caching
    allocator holds unused (reserved - allocated: earlier tiles, reusable, so the tile size does not
    shrink from one solve to the next); on CPU ``MemAvailable`` of /proc/meminfo, or a conservative
    2 GiB where that cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_MEMORY


def tile_rows(n_rows: int, n_columns: int, element_size: int, device, tile_entries: Optional[int] = None,
              memory_budget: Optional[int] = None) -> int:
    """Rows of one tile of the online log-sum-exp (each row spans all ``n_columns``).

    With ``tile_entries`` the tile holds at most that many cost entries; otherwise it uses at most
    ``memory_budget`` bytes (default: 1/4 of :func:`free_memory`) for its ``2`` live buffers;
    CPU tiles are also capped at ``2**18`` entries (cache-sized; larger ones run slower). A budget too
    small for a single row is a ``ValueError`` naming both figures, never an out-of-memory hang.
    """
    if tile_entries is not None:
        if tile_entries < n_columns:
            raise ValueError(f"tile_entries: one row tile needs {n_columns} entries (one per target point), "
                             f"but got tile_entries = {tile_entries}")
        return max(1, min(n_rows, tile_entries // n_columns))
    device = torch.device(device)
    budget = memory_budget if memory_budget is not None else int(_MEMORY_FRACTION * free_memory(device))
    row_bytes = n_columns * element_size * _TILE_COPIES
    if row_bytes > budget:
        source = "memory_budget" if memory_budget is not None else f"1/4 of the free memory on {device}"
        raise ValueError(f"memory_budget: one row tile of the online Sinkhorn needs {row_bytes:,} bytes "
                         f"({n_columns:,} columns x {element_size} bytes x {_TILE_COPIES} buffers), but the budget "
                         f"({source}) is {budget:,} bytes")
    rows = budget // row_bytes
    if device.type == "cpu":
        rows = min(rows, max(1, _CPU_TILE_ENTRIES // n_columns))
    return int(max(1, min(n_rows, rows)))


def _check_tiling(tile_entries, memory_budget):
    if tile_entries is not None:
        tile_entries = check_int("tile_entries", tile_entries, minimum=1)
    if memory_budget is not None:
        memory_budget = check_int("memory_budget", memory_budget, minimum=1)
    return tile_entries, memory_budget


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
    tiling = _check_tiling(tile_entries, memory_budget)
    blur = default_blur(x, y) if blur is None else check_positive("blur", blur)
    a_log = _weights_log("a", a, x)
    b_log = _weights_log("b", b, y)
    work_x, work_y, _ = _centred(x, y)
    if diameter is None:
        diameter = _diameter(x, y)
    levels = _geomloss_schedule(check_positive("diameter", diameter), blur, scaling)
    xy, yx = _DenseKernel(work_x, work_y, tiling), _DenseKernel(work_y, work_x, tiling)
    pairs = [(xy, b_log, yx, a_log)]  # (kernel for f, weights f sums over, kernel for g, weights g sums over)
    if debias:
        pairs += [(_DenseKernel(work_x, work_x, tiling), a_log, None, None),
                  (_DenseKernel(work_y, work_y, tiling), b_log, None, None)]
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
    tiling = _check_tiling(tile_entries, memory_budget)
    eps = potentials.eps
    work_x, work_y, shift = _centred(x, y)
    with torch.no_grad():
        mapped = _DenseKernel(work_x, work_y, tiling).barycentre(eps, _weights_log("b", b, y) + potentials.g / eps,
                                                                 work_y) + shift
        if debias and potentials.f_self is not None:
            own = _DenseKernel(work_x, work_x, tiling).barycentre(eps, _weights_log("a", a, x) + potentials.f_self / eps,
                                                                  work_x) + shift
            mapped = mapped - own + x
    return mapped


def _weights_log(name, weights, points):
    if weights is None:
        return _uniform_log(points)
    weights = check_tensor(name, weights, ndim=1)
    if weights.shape[0] != points.shape[0] or not bool((weights > 0).all()):
        raise ValueError(f"{name}: expected {points.shape[0]} positive weights, but got shape {tuple(weights.shape)}")
    return weights.to(points).log()


def _geomloss_schedule(diameter, blur, scaling):
    """geomloss' ``epsilon_schedule`` for p = 2, so that the two solvers take the same steps."""
    import numpy as np

    steps = np.arange(2 * np.log(diameter), 2 * np.log(blur), 2 * np.log(scaling))
    return [diameter ** 2] + [float(np.exp(e)) for e in steps] + [blur ** 2]


# -- checks -------------------------------------------------------------------------------------------
def _check_clouds(x, y):
    x = check_points("x", x)
    y = check_points("y", y)
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(f"y: expected dimension d = {x.shape[-1]} like x, but got shape {tuple(y.shape)}")
    if y.shape[-2] != x.shape[-2]:
        raise ValueError(f"y: expected N = {x.shape[-2]} particles like x (uniform clouds of equal size), "
                         f"but got shape {tuple(y.shape)}")
    if y.shape[:-2] != x.shape[:-2]:
        raise ValueError(f"y: expected batch dimensions {tuple(x.shape[:-2])} like x, but got {tuple(y.shape[:-2])}")
    if y.device != x.device or y.dtype != x.dtype:
        raise ValueError(f"y: expected device {x.device} and dtype {x.dtype} like x, but got {y.device}, {y.dtype}")
    return x, y


# -- exact backends -------------------------------------------------------------------------------------
def _sorted_map(x, y):
    order_x = x[:, 0].argsort()
    mapped = torch.empty_like(y)
    mapped[order_x] = y[y[:, 0].argsort()]
    return mapped


def _assignment_map(x, y):
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x.detach().double(), y.detach().double()).pow(2).cpu().numpy()
    rows, columns = linear_sum_assignment(cost)
    index = torch.as_tensor(columns[rows.argsort()], device=x.device)
    return y[index]


# -- geomloss backends ----------------------------------------------------------------------------------
def _geomloss_map(x, y, blur, scaling, backend, tiling=(None, None)):
    from geomloss import SamplesLoss

    if backend == "keops":
        backend = "multiscale" if x.shape[-1] <= 3 else "online"
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, potentials=True, backend=backend)
    work_x, work_y, shift = _centred(x, y)
    with torch.no_grad():
        _, g = loss(work_x.contiguous(), work_y.contiguous())
    eps = blur ** 2
    kernel = _DenseKernel(work_x, work_y, tiling)
    return kernel.barycentre(eps, _uniform_log(work_y) + g.reshape(-1) / eps, work_y) + shift


# -- torch log-domain Sinkhorn -------------------------------------------------------------------------
def _centred(x, y):
    """Shift both clouds by a common point (the cost is invariant; rounding of |x|^2 is not)."""
    shift = 0.5 * (x.mean(0) + y.mean(0))
    return x - shift, y - shift, shift


def _uniform_log(points):
    return torch.full((points.shape[0],), -math.log(points.shape[0]), dtype=points.dtype, device=points.device)


def _exp_shifted(scores):
    """``exp`` of max-shifted scores (<= 0), in place. Scores below -60 weigh < 1e-26 and are
    clamped first on CPU: exp of large negative float32 values takes a slow path on x86 CPUs (4x
    slower). GPUs have no such path, and the clamp would be one more pass over the tile."""
    if scores.is_cuda:
        return scores.exp_()
    return scores.clamp_(min=-60.0).exp_()


class _DenseKernel:
    """Cost :math:`|x_i - y_j|^2 / 2` evaluated tile by tile (rows of ``x`` against all of ``y``),
    never stored whole: the online log-sum-exp.

    A tile's scores :math:`h_j - C_{ij}/\varepsilon` are one ``addmm``: with
    :math:`C_{ij} = |x_i|^2/2 + |y_j|^2/2 - x_i \cdot y_j`, the row constant :math:`|x_i|^2/2`
    leaves the log-sum-exp and is added back afterwards. Clouds are centred before they get here,
    so the matmul form loses no digits that ``cdist`` would keep.
    """

    def __init__(self, x, y, tiling=(None, None)):
        self.x, self.y, self.tiling = x, y, tiling
        self.rows = tile_rows(x.shape[0], y.shape[0], x.element_size(), x.device, *tiling)
        self.x_half_square = 0.5 * x.pow(2).sum(1)
        self.y_half_square = 0.5 * y.pow(2).sum(1)
        self.y_t = y.T.contiguous()  # a (d, M) row-major operand: the thin matmul runs about 1.4x faster

    def transpose(self):
        return _DenseKernel(self.y, self.x, self.tiling)

    def _tiles(self, eps, h):
        """``(rows, scores)``: scores :math:`x_i \cdot y_j/\varepsilon + h_j - |y_j|^2/(2\varepsilon)`."""
        bias = h - self.y_half_square / eps
        for start in range(0, self.x.shape[0], self.rows):
            rows = slice(start, start + self.rows)
            yield rows, torch.addmm(bias, self.x[rows], self.y_t, alpha=1.0 / eps)

    def softmin(self, eps, h):
        """:math:`-\varepsilon \log \sum_j \exp(h_j - C_{ij}/\varepsilon)` for every row, ``(N,)``."""
        out = torch.empty(self.x.shape[0], dtype=self.x.dtype, device=self.x.device)
        for rows, scores in self._tiles(eps, h):
            peak = scores.amax(1, keepdim=True)
            out[rows] = _exp_shifted(scores.sub_(peak)).sum(1).log_().add_(peak.squeeze(1))
        return self.x_half_square - eps * out

    def barycentre(self, eps, h, values):
        """Rows of the softmax of :math:`h_j - C_{ij}/\varepsilon` applied to ``values (M, k)``."""
        out = torch.empty((self.x.shape[0], values.shape[1]), dtype=values.dtype, device=values.device)
        for rows, scores in self._tiles(eps, h):
            weights = _exp_shifted(scores.sub_(scores.amax(1, keepdim=True)))
            out[rows] = (weights @ values) / weights.sum(1, keepdim=True)
        return out


class _SparseKernel:
    """Cost on a list of pairs ``(rows[k], cols[k])`` only: the truncated kernel."""

    def __init__(self, x, y, rows, cols, cost=None):
        self.x, self.y, self.rows, self.cols = x, y, rows, cols
        self.cost = cost if cost is not None else 0.5 * (x[rows] - y[cols]).pow(2).sum(-1)

    def transpose(self):
        return _SparseKernel(self.y, self.x, self.cols, self.rows, self.cost)

    def _log_softmax_rows(self, eps, h):
        scores = h[self.cols] - self.cost / eps
        size = self.x.shape[0]
        peak = torch.full((size,), -torch.inf, dtype=scores.dtype, device=scores.device)
        peak = peak.scatter_reduce(0, self.rows, scores, reduce="amax", include_self=True)
        shifted = _exp_shifted(scores - peak[self.rows])
        total = torch.zeros_like(peak).scatter_add_(0, self.rows, shifted)
        return scores, peak, shifted, total

    def softmin(self, eps, h):
        _, peak, _, total = self._log_softmax_rows(eps, h)
        return -eps * (peak + total.log())

    def barycentre(self, eps, h, values):
        _, peak, shifted, total = self._log_softmax_rows(eps, h)
        weights = shifted / total[self.rows]
        out = torch.zeros((self.x.shape[0], values.shape[1]), dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.rows, weights.unsqueeze(1) * values[self.cols])

    def prune(self, eps, f, g, truncate):
        """Drop pairs whose plan ratio :math:`\\pi_{ij}/(a_i b_j)` is below ``exp(-truncate)``,
        keeping each row's and column's best pair."""
        score = (f[self.rows] + g[self.cols] - self.cost) / eps
        keep = score >= -truncate
        keep |= _best_pairs(score, self.rows, self.x.shape[0]) | _best_pairs(score, self.cols, self.y.shape[0])
        return _SparseKernel(self.x, self.y, self.rows[keep], self.cols[keep], self.cost[keep])


def _best_pairs(score, index, size):
    peak = torch.full((size,), -torch.inf, dtype=score.dtype, device=score.device)
    peak = peak.scatter_reduce(0, index, score, reduce="amax", include_self=True)
    return score >= peak[index]


def _epsilon_schedule(diameter, eps, scaling):
    """Geometric annealing from the squared diameter down to ``eps`` (blur shrinks by ``scaling``)."""
    levels = [max(diameter ** 2, eps)]
    while levels[-1] * scaling ** 2 > eps:
        levels.append(levels[-1] * scaling ** 2)
    levels.append(eps)
    return levels


def _diameter(x, y):
    both = torch.cat([x, y])
    return float((both.max(0).values - both.min(0).values).norm())


def _sinkhorn_levels(kernel, a_log, b_log, levels, f=None, g=None):
    """Symmetric (averaged) Sinkhorn updates, one per annealing level (geomloss' scheme)."""
    transposed = kernel.transpose()
    if f is None:
        f = kernel.softmin(levels[0], b_log)
        g = transposed.softmin(levels[0], a_log)
    for eps in levels:
        f_new = kernel.softmin(eps, b_log + g / eps)
        g_new = transposed.softmin(eps, a_log + f / eps)
        f, g = 0.5 * (f + f_new), 0.5 * (g + g_new)
    return f, g


def _sinkhorn_converge(kernel, a_log, b_log, eps, f, g, tolerance, max_iterations):
    """Alternating updates at the final ``eps`` until the column marginal of the plan is within
    ``tolerance`` of ``b`` in mean relative error (rows are exact after every f-update).

    The error is read on the host once per iteration (the only synchronisation of the loop);
    ``kernel.converged`` records whether the tolerance was reached."""
    transposed = kernel.transpose()
    iterations = 0
    kernel.converged, kernel.marginal_error = False, math.inf
    for iterations in range(1, max_iterations + 1):
        g_new = transposed.softmin(eps, a_log + f / eps)
        # column sums of the plan before this update are exp((g - g_new) / eps) * b_j
        error = float(((g - g_new) / eps).clamp(-30, 30).exp().sub(1).abs().mean())
        f = kernel.softmin(eps, b_log + g_new / eps)
        g = g_new
        kernel.marginal_error = error
        if error < tolerance:
            kernel.converged = True
            break
    return f, g, iterations


def _online_solve(x, y, eps, scaling, tolerance, max_iterations, previous, tiling=(None, None)):
    """Dense tiled Sinkhorn. Cold starts in d <= 3 beyond ``_DENSE_LIMIT`` points anneal the
    coarse scales on grid clusters (the multiscale backend's coarse stage, ``O(N)`` kernels) and
    only the levels below the cluster scale on the full tiles: about 3x fewer full soft-mins."""
    kernel = _DenseKernel(x, y, tiling)
    a_log, b_log = _uniform_log(x), _uniform_log(y)
    if previous is not None:
        (f, g), count = previous, 0
    elif x.shape[1] <= 3 and max(x.shape[0], y.shape[0]) > _DENSE_LIMIT:
        f, g, _, cell, count = _coarse_start(x, y, eps, scaling, tolerance, a_log, b_log)
        levels = _epsilon_schedule(max(cell, math.sqrt(eps)), eps, scaling)[1:]
        f, g = _sinkhorn_levels(kernel, a_log, b_log, levels, f, g)
        count += len(levels)
    else:
        levels = _epsilon_schedule(_diameter(x, y), eps, scaling)
        f, g = _sinkhorn_levels(kernel, a_log, b_log, levels)
        count = len(levels)
    f, g, iterations = _sinkhorn_converge(kernel, a_log, b_log, eps, f, g, tolerance, max_iterations)
    return kernel, f, g, count + iterations


def _grid_clusters(points, cell, weights=None):
    """Occupied cells of a grid of side ``cell``: labels ``(N,)``, centroids ``(K, d)`` and masses
    ``(K,)`` (particle counts, or sums of ``weights``)."""
    cells = torch.floor((points - points.min(0).values) / cell).long()
    span = int(cells.max()) + 1
    key = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for axis in range(points.shape[1]):
        key = key * span + cells[:, axis]
    _, labels = torch.unique(key, return_inverse=True)
    if weights is None:
        weights = torch.ones(points.shape[0], dtype=points.dtype, device=points.device)
    masses = torch.zeros(int(labels.max()) + 1, dtype=points.dtype, device=points.device).index_add_(0, labels, weights)
    centroids = torch.zeros((masses.numel(), points.shape[1]), dtype=points.dtype, device=points.device)
    centroids.index_add_(0, labels, points * weights.unsqueeze(1))
    return labels, centroids / masses.unsqueeze(1), masses


def _neighbour_pairs(predicted, y, radius):
    """All pairs ``(i, j)`` with ``|predicted_i - y_j| <= radius``: ``y`` sorted into grid cells of
    side ``radius / 2``, each prediction looks in the 5^d cells around its own."""
    dim = y.shape[1]
    side = radius / 2
    origin = torch.minimum(predicted.min(0).values, y.min(0).values)
    cell_p = torch.floor((predicted - origin) / side).long()
    cell_y = torch.floor((y - origin) / side).long()
    span = int(torch.maximum(cell_p.max(), cell_y.max())) + 5
    weights = span ** torch.arange(dim - 1, -1, -1, device=y.device)
    key_y = ((cell_y + 2) * weights).sum(1)
    order_y = key_y.argsort()
    sorted_keys = key_y[order_y]
    key_p = ((cell_p + 2) * weights).sum(1)
    every = torch.arange(predicted.shape[0], device=y.device)
    rows, cols = [], []
    offsets = torch.cartesian_prod(*[torch.arange(-2, 3, device=y.device)] * dim).reshape(-1, dim)
    for offset in offsets:
        key = key_p + (offset * weights).sum()
        start = torch.searchsorted(sorted_keys, key, side="left")
        counts = torch.searchsorted(sorted_keys, key, side="right") - start
        row = torch.repeat_interleave(every, counts)
        first = torch.repeat_interleave(start - (torch.cumsum(counts, 0) - counts), counts)
        col = order_y[first + torch.arange(row.numel(), device=y.device)]
        close = (predicted[row] - y[col]).pow(2).sum(1) <= radius ** 2
        rows.append(row[close])
        cols.append(col[close])
    return torch.cat(rows), torch.cat(cols)


def _truncated_kernel(x, y, predicted, radius):
    """Sparse kernel: pairs within ``radius`` of the ``predicted`` targets, plus, for any row or
    column left without a pair (outliers), its nearest partner."""
    rows, cols = _neighbour_pairs(predicted, y, radius)
    lonely_rows = (torch.bincount(rows, minlength=x.shape[0]) == 0).nonzero().squeeze(1)
    lonely_cols = (torch.bincount(cols, minlength=y.shape[0]) == 0).nonzero().squeeze(1)
    extra_rows = [rows, lonely_rows, torch.cdist(y[lonely_cols], predicted).argmin(1)]
    extra_cols = [cols, torch.cdist(predicted[lonely_rows], y).argmin(1), lonely_cols]
    return _SparseKernel(x, y, torch.cat(extra_rows), torch.cat(extra_cols))


def _occupied_cells_scale(points, count):
    """Side of the grid cells that leaves about ``count`` occupied cells (two refinements)."""
    extent = (points.max(0).values - points.min(0).values).clamp_min(1e-12)
    dim = points.shape[1]
    cell = float(extent.prod()) ** (1 / dim) / count ** (1 / dim)
    for _ in range(2):
        occupied = _grid_clusters(points, cell)[2].numel()
        cell *= (occupied / count) ** (1 / dim)
    return cell


def _multiscale_solve(x, y, eps, scaling, tolerance, max_iterations, previous, a_log=None, b_log=None):
    """Coarse-to-fine Sinkhorn. Grid clusters of about ``_CLUSTER_SIZE`` particles are solved
    (recursively, dense below ``_DENSE_LIMIT`` points) down to the cluster scale; the coarse
    potentials and barycentric targets are extrapolated to the particles, and the fine problem
    is solved on a sparse kernel around those targets, pruned at every finer level.

    ``previous`` (warm start) is ``(f, g, predicted targets (N, d), margin)``: no coarse stage."""
    n, dim = x.shape
    a_log = _uniform_log(x) if a_log is None else a_log
    b_log = _uniform_log(y) if b_log is None else b_log
    if previous is None and max(n, y.shape[0]) <= _DENSE_LIMIT:
        kernel = _DenseKernel(x, y)
        levels = _epsilon_schedule(_diameter(x, y), eps, scaling)
        f, g = _sinkhorn_levels(kernel, a_log, b_log, levels)
        f, g, iterations = _sinkhorn_converge(kernel, a_log, b_log, eps, f, g, tolerance, max_iterations)
        return kernel, f, g, len(levels) + iterations
    if previous is None:
        f, g, predicted, cell, count = _coarse_start(x, y, eps, scaling, tolerance, a_log, b_log)
        fine_levels = _epsilon_schedule(max(cell, math.sqrt(eps)), eps, scaling)[1:]
        margin = _MARGIN * cell
    else:
        f, g, predicted, margin = previous
        fine_levels, count = [eps], 0
    kernel = _truncated_kernel(x, y, predicted, math.sqrt(2 * _TRUNCATE * fine_levels[0]) + margin)
    for level in fine_levels:
        f, g = _sinkhorn_levels(kernel, a_log, b_log, [level], f, g)
        kernel = kernel.prune(level, f, g, _TRUNCATE)
    f, g, iterations = _sinkhorn_converge(kernel, a_log, b_log, eps, f, g, tolerance, max_iterations)
    return kernel, f, g, count + len(fine_levels) + iterations


def _coarse_start(x, y, eps, scaling, tolerance, a_log, b_log):
    """Potentials ``f (N,)``, ``g (M,)`` and barycentric targets ``(N, d)`` at the scale of grid
    clusters of about ``_CLUSTER_SIZE`` particles (annealed on the clusters, then extrapolated to
    the particles through the coarse kernel); also the cluster side and the levels spent."""
    cell = max(_occupied_cells_scale(torch.cat([x, y]), 2 * x.shape[0] / _CLUSTER_SIZE), math.sqrt(eps))
    label_x, centre_x, count_x = _grid_clusters(x, cell, a_log.exp())
    label_y, centre_y, count_y = _grid_clusters(y, cell, b_log.exp())
    eps_coarse = max(eps, cell ** 2)
    coarse, f_c, g_c, count = _multiscale_solve(centre_x, centre_y, eps_coarse, scaling, tolerance, 3, None,
                                                count_x.log(), count_y.log())
    f, predicted = _extrapolate(coarse, label_x, x, centre_y, count_y.log() + g_c / eps_coarse, eps_coarse)
    g = _extrapolate(coarse.transpose(), label_y, y, centre_x, count_x.log() + f_c / eps_coarse, eps_coarse,
                     targets=False)
    return f, g, predicted, cell, count


def _extrapolate(coarse, labels, points, centres, h, eps, targets=True):
    """Softmin (and barycentre, if ``targets``) of ``points`` against the coarse targets their
    cluster is paired with."""
    if isinstance(coarse, _DenseKernel):
        kernel = _DenseKernel(points, centres)
    else:
        # pairs (i, J) for every coarse pair (label_i, J)
        order = labels.argsort()
        counts = torch.bincount(labels, minlength=coarse.x.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        sizes = counts[coarse.rows]
        pair = torch.repeat_interleave(torch.arange(coarse.rows.numel(), device=points.device), sizes)
        offset = torch.arange(pair.numel(), device=points.device) - torch.repeat_interleave(
            torch.cumsum(sizes, 0) - sizes, sizes)
        rows = order[starts[coarse.rows][pair] + offset]
        kernel = _SparseKernel(points, centres, rows, coarse.cols[pair])
    if not targets:
        return kernel.softmin(eps, h)
    return kernel.softmin(eps, h), kernel.barycentre(eps, h, centres)
