r"""Exact optimal assignment on a sparse candidate graph, certified on every pair.

For two uniform clouds of equal size ``N`` the optimal plan of the cost :math:`|x_i - y_j|^2` is a
permutation. Nearly all of its pairs have a small *reduced cost*
:math:`r_{ij} = |x_i - y_j|^2 - f_i - g_j` under any good pair of dual potentials, so the assignment
can be solved on a graph of ``K`` candidates per row and column (``O(N K)`` arcs) and then proved
optimal on all ``N^2`` pairs:

1. **Potentials.** Each cloud is clustered on its own grid (about ``PER_CELL`` particles per cell);
   the coarse problem between cluster masses is solved exactly (POT's ``ot.emd``, with its duals),
   and its duals are carried to the particles by c-transforms.
2. **Candidates.** The ``K`` smallest reduced costs of every row and every column, plus one fixed
   permutation, so that the graph always has a perfect matching.
3. **Sparse solve.** OR-Tools' ``SimpleLinearSumAssignment`` (cost scaling) on integer reduced
   costs (``round(r * scale)``).
4. **Certificate.** Dual potentials that are feasible on every arc of the graph and tight on the
   matching are computed by relaxation (Bellman-Ford rounds, vectorised) starting from the coarse
   ones. If :math:`r_{ij} - f_i - g_j \ge 0` holds on *all* ``N^2`` pairs, linear-programming duality
   proves the matching optimal; otherwise the most violated pairs of each row join the graph and
   steps 3-4 repeat. ``MAX_PRICING`` rounds without a certificate fall back to ``ot.emd``.

The matching is optimal for the rounded costs, so its total cost is within ``N / scale`` of the
optimum (a relative ``1e-8`` of the candidates' reduced costs). The ``N^2`` pairs are never stored nor
all formed: candidates, c-transforms and the certificate go through
:func:`~.reduced_search.smallest_reduced`, which forms only the block pairs that its lower bounds do
not rule out (1.7% of the pairs at N = 3e4) and proves the rest above the cut. Memory is ``O(N K)``
plus the block bounds; at N = 3e4 the whole solve went from 137 s (row tiles of all pairs) to 38 s.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .atoms import normalised
from .reduced_search import median_labels, smallest_reduced

__all__ = ["sparse_assignment", "ortools_available", "PER_CELL", "CANDIDATES", "MAX_PRICING", "RECURSE_FROM"]

PER_CELL = 3.0        # particles per coarse cluster (8 gave 4-8 pricing rounds at N = 2,000; 3 gave 1-2)
CANDIDATES = 10       # candidates per row and per column (6: 2-4 pricing rounds; 10: 1-2)
MAX_PRICING = 30      # pricing rounds before falling back to the dense network simplex
RECURSE_FROM = 1024   # coarse problems of this many clusters are solved by this module too (ot.emd below)
_RESOLUTION = 2.0 ** 26  # integer units per largest candidate reduced cost
_COST_RANGE = 2.0 ** 60  # bound on (cost range) x (n + 1)^2: OR-Tools scales costs by n + 1 and its price
#                          bound grows with n again; it warned of overflow (and found no solution) with
#                          the range x (n + 1) at 2**56 (L-shape, N = 1e4) and at 2**48 (blobs, N = 3e4)
_SLACK_UNITS = 2         # integer units a pair's slack may fall below zero by rounding alone


def ortools_available() -> bool:
    try:
        from ortools.graph.python import linear_sum_assignment  # noqa: F401
    except ImportError:
        return False
    return True


def sparse_assignment(x: np.ndarray, y: np.ndarray) -> Optional[Tuple[np.ndarray, int]]:
    """Optimal partner ``(N,)`` of every row of ``x (N, d)`` among the rows of ``y (N, d)`` (float64
    numpy arrays) and the number of pricing rounds it took; ``None`` when no certificate was reached
    within ``MAX_PRICING`` rounds (the caller then solves densely)."""
    source = _check_cloud("x", x, None)
    target = _check_cloud("y", y, source.shape)
    # a common centre and scale first: at an offset of 1e4 the certificate failed on rounding (10x slower)
    source, target, _, _ = normalised(source, target)
    solved = _certified(source, target)
    return None if solved is None else solved[:2]


def _check_cloud(name, value, shape):
    """``value`` as a float64 tensor ``(N, d)``, finite, with ``shape`` if given (``x``'s)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, but got {type(value).__name__}")
    if value.dtype != np.float64 or value.ndim != 2 or value.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty float64 array of shape (N, d), but got {value.dtype} "
                         f"{value.shape}")
    if shape is not None and value.shape != tuple(shape):
        raise ValueError(f"{name}: expected the shape of x, {tuple(shape)}, but got {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name}: expected finite entries, but got {int((~np.isfinite(value)).sum())} that are not")
    return torch.from_numpy(value)


def _certified(source, target):
    """``(partner, rounds, f, g, tolerance)``: the certified assignment and dual potentials ``f (N,)``,
    ``g (N,)`` with ``|x_i - y_j|^2 - f_i - g_j >= -tolerance`` on all pairs (the integer resolution),
    or ``None``."""
    n = source.shape[0]
    f, g = _coarse_potentials(source, target)
    base_rows, base_cols, largest = _candidates(source, target, f, g, CANDIDATES)
    # a perfect matching keeps the graph feasible: the identity pairing in the first round, then the
    # last matching found. The identity's long arcs widen the cost range, which coarsens the
    # resolution through OR-Tools' int64 bound (Student-t to disk, N = 1e5: tolerance 4.3e-6, relative
    # suboptimality certified to 7.9e-6 only): a first round limited by the range is solved again
    matching = np.arange(n)
    for rounds in range(1, MAX_PRICING + 1):
        rows, cols = _unique_pairs(np.concatenate([base_rows, np.arange(n)]), np.concatenate([base_cols, matching]), n)
        reduced = _arc_costs(source, target, f, g, rows, cols)
        # resolution on the candidates' scale, but the cost range times (n + 1)^2 (OR-Tools' scaling)
        # must stay well inside int64: priced-in pairs can carry large reduced costs
        spread = float(reduced.max() - reduced.min())
        fine = _RESOLUTION / max(largest, 1e-300)
        scale = min(fine, _COST_RANGE / ((n + 1) ** 2 * max(spread, 1e-300)))
        costs = torch.round(reduced * scale).to(torch.int64).numpy()
        partner = _solve(rows, cols, costs, n)
        if partner is None:
            return None
        duals = _graph_duals(partner, rows, cols, costs, n)
        if duals is None:
            return None
        extra_rows, extra_cols = _violations(source, target, f, g, scale, *duals, CANDIDATES)
        if extra_rows.size == 0 and (scale == fine or rounds > 1):
            f_extra, g_extra = (torch.from_numpy(value).to(source.dtype) / scale for value in duals)
            return partner, rounds, f + f_extra, g + g_extra, (_SLACK_UNITS + 0.5) / scale
        base_rows, base_cols = np.concatenate([base_rows, extra_rows]), np.concatenate([base_cols, extra_cols])
        matching = partner
    return None


# -- step 1: potentials ---------------------------------------------------------------------------
def _coarse_potentials(x: torch.Tensor, y: torch.Tensor):
    """``f (N,)``, ``g (N,)``: c-transforms of the duals of the problem between the clusters of ``x``
    and ``y``: solved by this module again (as a uniform assignment between the centroids, whose
    counts differ by one at most) from ``RECURSE_FROM`` clusters on, by ``ot.emd`` below."""
    import ot

    centre_x, mass_x = _median_clusters(x, PER_CELL)
    centre_y, mass_y = _median_clusters(y, PER_CELL)
    solved = None
    if centre_x.shape[0] == centre_y.shape[0] >= RECURSE_FROM:
        solved = _certified(centre_x, centre_y)
    if solved is not None:
        u, v = solved[2], solved[3]
    else:
        cost = torch.cdist(centre_x, centre_y).pow(2).numpy()
        _, log = ot.emd((mass_x / mass_x.sum()).numpy(), (mass_y / mass_y.sum()).numpy(), cost, log=True)
        u, v = torch.from_numpy(log["u"]), torch.from_numpy(log["v"])
    f = _row_minima(x, centre_y, -v)
    g = _row_minima(y, centre_x, -u)
    return f, g


def _median_clusters(points, size):
    """Centroids ``(K, d)`` and masses ``(K,)`` of clusters of ``size`` to ``2 size`` points, made by
    splitting every cluster at the median of its widest axis (:func:`~.reduced_search.median_labels`).

    Equal-count clusters follow the density: a grid of equal cells put 49 particles of a Student-t
    core into one cell (and one into each tail cell), and the certificate then took 4 pricing rounds."""
    labels = median_labels(points, size)
    masses = torch.bincount(labels).to(points.dtype)
    occupied = masses > 0
    centroids = torch.zeros((masses.numel(), points.shape[1]), dtype=points.dtype).index_add_(0, labels, points)
    return centroids[occupied] / masses[occupied, None], masses[occupied]


def _row_minima(points, centres, offset):
    """``min_J |points_i - centres_J|^2 + offset_J`` for every row ``i`` (a c-transform), without the
    ``N x K`` matrix."""
    zeros = torch.zeros(points.shape[0], dtype=points.dtype)
    return smallest_reduced(points, centres, zeros, -offset, 1)[2]


# -- step 2: candidates ---------------------------------------------------------------------------
def _candidates(x, y, f, g, count):
    """Pairs ``(rows, cols)``: the ``count`` smallest reduced costs of every row and of every column,
    and the largest reduced cost among them (it sets the integer resolution)."""
    rows, cols, row_values = smallest_reduced(x, y, f, g, count)
    col_cols, col_rows, col_values = smallest_reduced(y, x, g, f, count)  # the columns' own smallest
    largest = max(float(row_values.max()), float(col_values.max()))
    return torch.cat([rows, col_rows]).numpy(), torch.cat([cols, col_cols]).numpy(), largest


def _unique_pairs(rows, cols, n):
    keys = np.unique(rows.astype(np.int64) * n + cols)
    return keys // n, keys % n


def _arc_costs(x, y, f, g, rows, cols):
    """Reduced costs of the arcs ``(rows, cols)``, float, by the direct formula."""
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    return (x[rows_t] - y[cols_t]).pow(2).sum(1) - f[rows_t] - g[cols_t]


# -- step 3: the sparse solve ---------------------------------------------------------------------
def _solve(rows, cols, costs, n):
    """OR-Tools' cost-scaling assignment on the arcs; ``None`` if it finds none."""
    from ortools.graph.python import linear_sum_assignment

    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    solver.add_arcs_with_cost(rows, cols, costs - costs.min())  # non-negative costs, same optimum
    if solver.solve() != solver.OPTIMAL:
        return None
    return np.fromiter((solver.right_mate(i) for i in range(n)), dtype=np.int64, count=n)


# -- step 4: the certificate ----------------------------------------------------------------------
def _graph_duals(partner, rows, cols, costs, n):
    """Integer potentials ``(f_extra, g_extra)`` with ``costs - f_extra - g_extra >= 0`` on every arc and
    ``= 0`` on the matching, the largest such below the coarse potentials (relaxation from zero).

    Every round relaxes every arc (Jacobi): 1,233 rounds at N = 3e4 (the shortest paths cross the
    domain), 2.3 s CPU. Relaxing only the arcs of the rows that changed (label-correcting) took 8.6 s
    there: rows are lowered about 400 times each, so the active set stays at most of the rows."""
    order = np.argsort(cols, kind="stable")
    arc_rows, arc_cols, arc_costs = rows[order], cols[order], costs[order]
    starts = np.flatnonzero(np.r_[True, arc_cols[1:] != arc_cols[:-1]])
    heads = arc_cols[starts]
    matched = np.full(n, np.iinfo(np.int64).max // 4, dtype=np.int64)
    on_matching = partner[arc_rows] == arc_cols
    matched[arc_rows[on_matching]] = arc_costs[on_matching]
    distance_row = np.zeros(n, dtype=np.int64)
    distance_col = np.zeros(n, dtype=np.int64)
    # shortest-path distances: column j <= row i + c_ij on every arc, row i <= column partner_i - c_i
    # (the matched arc walked backwards); the rounds stop when nothing changes, at most 2N + 1 of them
    for _ in range(2 * n + 1):
        new_col = distance_col.copy()
        new_col[heads] = np.minimum(distance_col[heads],
                                    np.minimum.reduceat(distance_row[arc_rows] + arc_costs, starts))
        new_row = np.minimum(distance_row, new_col[partner] - matched)
        if np.array_equal(new_col, distance_col) and np.array_equal(new_row, distance_row):
            return -distance_row, distance_col
        distance_col, distance_row = new_col, new_row
    return None  # a negative cycle: the sparse solve was not optimal on its own graph


def _violations(x, y, f, g, scale, f_extra, g_extra, count):
    """Pairs with a negative reduced cost under the certified potentials: the ``count`` most violated
    of every row that has any (empty arrays: the matching is optimal on all pairs). All ``N^2`` pairs
    are covered: :func:`~.reduced_search.smallest_reduced` forms every pair its block bounds do not
    rule out."""
    # in float, without rounding every pair: slack * scale < -(units + 1/2) means an integer slack
    # below -units; one more unit of tolerance than the rounding of the arcs' costs needs
    f_total = f + torch.from_numpy(f_extra).to(x.dtype) / scale
    g_total = g + torch.from_numpy(g_extra).to(x.dtype) / scale
    threshold = -(_SLACK_UNITS + 0.5) / scale
    rows, cols, _ = smallest_reduced(x, y, f_total, g_total, count, below=threshold)
    return rows.numpy(), cols.numpy()
