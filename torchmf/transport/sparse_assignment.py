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
optimum (a relative ``1e-8`` of the candidates' reduced costs). The ``N^2`` pairs are visited in row
tiles and never stored: memory is ``O(N K)`` plus one tile.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from .atoms import normalised

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
_TILE_ENTRIES = 2 ** 22  # pairs per row tile of the N x N passes (32 MB in float64)
_CACHE_ENTRIES = 2 ** 23  # up to this many pairs (N <= 2,896) the reduced costs are kept between passes


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
    """``(partner, rounds, f, g)``: the certified assignment and dual potentials ``f (N,)``, ``g (N,)``
    with ``|x_i - y_j|^2 - f_i - g_j >= 0`` on all pairs (to the integer resolution), or ``None``."""
    n = source.shape[0]
    f, g = _coarse_potentials(source, target)
    cache = []
    rows, cols, largest = _candidates(source, target, f, g, CANDIDATES, cache)
    permutation = np.arange(n)
    rows, cols = np.concatenate([rows, permutation]), np.concatenate([cols, permutation])
    for rounds in range(1, MAX_PRICING + 1):
        rows, cols = _unique_pairs(rows, cols, n)
        reduced = _arc_costs(source, target, f, g, rows, cols)
        # resolution on the candidates' scale, but the cost range times (n + 1)^2 (OR-Tools' scaling)
        # must stay well inside int64: priced-in pairs can carry large reduced costs
        spread = float(reduced.max() - reduced.min())
        scale = min(_RESOLUTION / max(largest, 1e-300), _COST_RANGE / ((n + 1) ** 2 * max(spread, 1e-300)))
        costs = torch.round(reduced * scale).to(torch.int64).numpy()
        partner = _solve(rows, cols, costs, n)
        if partner is None:
            return None
        duals = _graph_duals(partner, rows, cols, costs, n)
        if duals is None:
            return None
        extra_rows, extra_cols = _violations(source, target, f, g, scale, *duals, CANDIDATES, cache)
        if extra_rows.size == 0:
            f_extra, g_extra = (torch.from_numpy(value).to(source.dtype) / scale for value in duals)
            return partner, rounds, f + f_extra, g + g_extra
        rows, cols = np.concatenate([rows, extra_rows]), np.concatenate([cols, extra_cols])
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
    splitting every cluster at the median of its widest axis (a k-d tree).

    Equal-count clusters follow the density: a grid of equal cells put 49 particles of a Student-t
    core into one cell (and one into each tail cell), and the certificate then took 4 pricing rounds."""
    n, dim = points.shape
    labels = torch.zeros(n, dtype=torch.long)
    levels = max(0, int(math.floor(math.log2(max(1.0, n / size)))))
    for _ in range(levels):
        count = int(labels.max()) + 1
        low = torch.full((count, dim), float("inf"), dtype=points.dtype).scatter_reduce(
            0, labels[:, None].expand(-1, dim), points, "amin")
        high = torch.full((count, dim), -float("inf"), dtype=points.dtype).scatter_reduce(
            0, labels[:, None].expand(-1, dim), points, "amax")
        axis = (high - low).argmax(1)[labels]
        along = points.gather(1, axis[:, None]).squeeze(1)
        # rank of every point along its cluster's axis: sort by coordinate, then (stably) by label
        order = along.argsort()
        order = order[labels[order].argsort(stable=True)]
        sizes = torch.bincount(labels, minlength=count)
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n) - starts[labels[order]]
        labels = 2 * labels + (2 * rank >= sizes[labels]).long()
    masses = torch.bincount(labels).to(points.dtype)
    occupied = masses > 0
    centroids = torch.zeros((masses.numel(), dim), dtype=points.dtype).index_add_(0, labels, points)
    return centroids[occupied] / masses[occupied, None], masses[occupied]


def _row_minima(points, centres, offset):
    """``min_J |points_i - centres_J|^2 + offset_J`` for every row ``i``, in tiles."""
    step = max(1, _TILE_ENTRIES // max(1, centres.shape[0]))
    return torch.cat([(torch.cdist(points[s:s + step], centres).pow(2) + offset).min(1).values
                      for s in range(0, points.shape[0], step)])


def _reduced_tiles(x, y, f, g, cache=None):
    """``(start, r (rows, N))``: reduced costs ``|x_i - y_j|^2 - f_i - g_j``, one row tile at a time.

    With a ``cache`` list the tiles are kept (when the whole matrix fits in ``_CACHE_ENTRIES``) and the
    next call with the same list reads them instead of recomputing; callers must not modify them."""
    if cache:
        yield from cache
        return
    keep = cache is not None and x.shape[0] * y.shape[0] <= _CACHE_ENTRIES
    step = max(1, _TILE_ENTRIES // y.shape[0])
    for start in range(0, x.shape[0], step):
        # the direct formula, as for the arcs' costs: the matrix-product form rounds differently
        tile = torch.cdist(x[start:start + step], y, compute_mode="donot_use_mm_for_euclid_dist").pow_(2)
        tile -= f[start:start + step, None]
        tile -= g[None, :]
        if keep:
            cache.append((start, tile))
        yield start, tile


# -- step 2: candidates ---------------------------------------------------------------------------
def _candidates(x, y, f, g, count, cache=None):
    """Pairs ``(rows, cols)``: the ``count`` smallest reduced costs of every row and of every column,
    and the largest reduced cost among them (it sets the integer resolution)."""
    n = y.shape[0]
    count = min(count, n)
    row_parts, col_parts = [], []
    best_values = torch.full((count, n), float("inf"), dtype=x.dtype)
    best_rows = torch.zeros((count, n), dtype=torch.long)
    largest = 0.0
    for start, tile in _reduced_tiles(x, y, f, g, cache):
        values, columns = tile.topk(count, dim=1, largest=False)
        largest = max(largest, float(values[:, -1].max()))
        row_parts.append(torch.arange(start, start + tile.shape[0]).repeat_interleave(count))
        col_parts.append(columns.reshape(-1))
        # merge this tile's best rows of every column into the running best
        tile_values, tile_rows = tile.topk(min(count, tile.shape[0]), dim=0, largest=False)
        merged_values = torch.cat([best_values, tile_values])
        merged_rows = torch.cat([best_rows, tile_rows + start])
        best_values, order = merged_values.topk(count, dim=0, largest=False)
        best_rows = merged_rows.gather(0, order)
    largest = max(largest, float(best_values[-1].max()))
    rows = torch.cat(row_parts + [best_rows.reshape(-1)]).numpy()
    cols = torch.cat(col_parts + [torch.arange(n).repeat(count)]).numpy()
    return rows, cols, largest


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
    ``= 0`` on the matching, the largest such below the coarse potentials (relaxation from zero)."""
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


def _violations(x, y, f, g, scale, f_extra, g_extra, count, cache=None):
    """Pairs with a negative reduced cost under the certified potentials: the ``count`` most violated
    of every row that has any (empty arrays: the matching is optimal on all pairs)."""
    # in float, without rounding every pair: slack * scale < -(units + 1/2) means an integer slack
    # below -units; one more unit of tolerance than the rounding of the arcs' costs needs
    f_extra_t = torch.from_numpy(f_extra).to(x.dtype) / scale
    g_extra_t = torch.from_numpy(g_extra).to(x.dtype) / scale
    threshold = -(_SLACK_UNITS + 0.5) / scale
    rows, cols = [], []
    for start, tile in _reduced_tiles(x, y, f, g, cache):
        slack = tile - f_extra_t[start:start + tile.shape[0], None]
        slack -= g_extra_t[None, :]
        slack -= threshold
        bad = (slack < 0).any(1).nonzero().squeeze(1)
        if bad.numel() == 0:
            continue
        values, columns = slack[bad].topk(min(count, y.shape[0]), dim=1, largest=False)
        keep = values < 0
        rows.append((bad + start)[:, None].expand_as(columns)[keep])
        cols.append(columns[keep])
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return torch.cat(rows).numpy(), torch.cat(cols).numpy()
