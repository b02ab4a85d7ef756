r"""Coarse-to-fine Sinkhorn on a sparse (truncated) kernel, for d <= 3.

Grid clusters of about ``CLUSTER_SIZE`` particles are solved first (recursively, densely below
``DENSE_LIMIT`` points) down to the cluster scale; their potentials and barycentric targets are
extrapolated to the particles, and the fine levels run on a sparse kernel that keeps only the pairs
near each particle's predicted target, pruned at every level. Where the clusters are finer than the
blur (many particles), they are solved at the final eps itself, converged, and every particle pair
of a cluster pair in their plan joins the kernel too, so that a map that tears (one cluster sent
to two places) keeps both branches. Up to ``SUPPORT_CHECK_PAIRS`` the converged sparse solve is
then checked against the dense kernel. A soft-min costs about ``O(N k)`` with ``k`` pairs per row,
against ``O(N M)`` for the dense kernel. The dense online backend also starts from
:func:`coarse_start` in d <= 3.
"""
from __future__ import annotations

import math

import torch

from .kernels import DenseKernel, SparseKernel, uniform_log
from .sinkhorn import SinkhornSettings, diameter, epsilon_schedule, sinkhorn_loop

__all__ = ["multiscale_solve", "coarse_start", "truncated_kernel", "DENSE_LIMIT", "SELF_TRUNCATE"]

DENSE_LIMIT = 600          # the recursion solves densely below this many points
DENSE_FALLBACK_PAIRS = 10_000 ** 2  # up to this many pairs an unconverged sparse solve is redone densely
SUPPORT_CHECK_PAIRS = 10_000 ** 2   # up to this many pairs a converged sparse solve's support is checked
#                                     (N = 1e4: 4-6 s of a 12-17 s solve; N = 3e4: 80 s of 165 s, not run)
_TRUNCATE = 12.0            # sparse kernel keeps pairs with pi_ij / (a_i b_j) >= exp(-_TRUNCATE); 6 lost mass
#                              that the finer levels needed (map error 0.090 against 0.066 dense, 0.071 at 12)
_CLUSTER_SIZE = 6.0          # particles per coarse grid cell
_MARGIN = 1.5                # error of the coarse targets, in cells, allowed for in the fine kernel: 0.25 lost
#                              partners (mixture to ring, N = 700: map error 0.090; 0.071 at 1.5, dense 0.066)
_RADIUS_TRUNCATE = 6.0      # first fine kernel: pairs within sqrt(2 * 6 * eps) of the predicted target
SELF_TRUNCATE = 12.0         # self-transport kernel: pairs within sqrt(2 * 12 * eps)
_MIN_PAIRS = 8               # pairs every row and column keeps in the sparse kernel
_SUPPORT_ROUNDS = 3          # dense checks of a converged sparse solve's support before the dense fallback
_DENSE_SHARE = 0.1           # a support with more than this share of all pairs continues on the dense kernel
DENSE = "dense"  # coarse_start's support when the plan is too spread for a sparse kernel
_FROM_COARSE_OMEGA = 1.5    # over-relaxation of the final level when it starts from clusters solved at that eps
_COARSE_TRUNCATE = 4.0      # cluster pairs with plan ratio >= exp(-4) give all their particle pairs to the
#                              fine kernel (mixture to ring, N = 1e4: the check then added 0.02% of the pairs)
# where the clusters sit above the final eps they only place the fine start within a cell: a loose solve
_SHRINK = 0.9               # the coarse problem recurses only when clustering left fewer than this share of points
_COARSE = SinkhornSettings(tolerance=1e-1, max_iterations=20, level_tolerance=1e-1, level_iterations=5)


def multiscale_solve(x, y, eps, scaling, settings, previous=None, a_log=None, b_log=None, check_support=True):
    """Sinkhorn between ``x (N, d)`` and ``y (M, d)`` at ``eps``: ``(kernel, f, g, SinkhornReport)``.

    ``previous`` (warm start) is ``(f, g, predicted targets (N, d), margin)``: no coarse stage, only
    the final level, on a kernel around the old targets widened by ``margin``."""
    n = x.shape[0]
    a_log = uniform_log(x) if a_log is None else a_log
    b_log = uniform_log(y) if b_log is None else b_log
    if previous is None and max(n, y.shape[0]) <= DENSE_LIMIT:
        return _dense_solve(x, y, eps, scaling, settings, a_log, b_log)
    if previous is None:
        f, g, predicted, cell, report, support = coarse_start(x, y, eps, scaling, a_log, b_log, settings)
        fine_levels = epsilon_schedule(max(cell, math.sqrt(eps)), eps, scaling)[1:]
        margin = _MARGIN * cell
    else:
        (f, g, predicted, margin), report, support = previous, None, None
        fine_levels = [eps]
    if support is DENSE:
        # a plan spread over this many pairs runs faster on the dense tiles (far apart clouds,
        # N = 1e4: 73% of all pairs in the clusters' support, 72 s sparse against 15 s dense)
        kernel = DenseKernel(x, y)
    else:
        kernel = truncated_kernel(x, y, predicted, math.sqrt(2 * _RADIUS_TRUNCATE * fine_levels[0]) + margin,
                                  support=support)
    for level in fine_levels[:-1]:
        f, g, level_report = sinkhorn_loop(kernel, a_log, b_log, [level], _level_only(settings), f, g)
        report = level_report if report is None else report + level_report
        kernel = kernel.prune(level, f, g, _TRUNCATE, _MIN_PAIRS)
    final_settings = settings
    if previous is None and len(fine_levels) == 1:
        # the clusters were solved at this eps: the particles start near their solution, where
        # strong over-relaxation first oscillates (mixture to ring, N = 1e4: 78 iterations at 1.9,
        # 22 at 1.5, 23 at 1.0; square to banana: 58 at 1.5, 115 at 1.0)
        final_settings = settings._replace(omega=min(settings.omega, _FROM_COARSE_OMEGA))
    f, g, final = sinkhorn_loop(kernel, a_log, b_log, [eps], final_settings, f, g)
    # not in the coarse stage (it only places the fine start), nor beyond SUPPORT_CHECK_PAIRS, where
    # the two dense soft-mins per round cost more than the solve; there the coarse plan's support
    # (below) is what keeps the right pairs
    if check_support and isinstance(kernel, SparseKernel) and x.shape[0] * y.shape[0] <= SUPPORT_CHECK_PAIRS:
        kernel, f, g, final = _complete_support(x, y, eps, settings, a_log, b_log, kernel, f, g, final)
    if not final.converged and x.shape[0] * y.shape[0] <= DENSE_FALLBACK_PAIRS:
        # The truncated support could not carry the marginals (or the warm start was far off):
        # fall back to the dense kernel, cold, which always converges (O(N M) per soft-min).
        # Beyond DENSE_FALLBACK_PAIRS that would take hours: the solve is reported unconverged.
        kernel, f, g, dense = _dense_solve(x, y, eps, scaling, settings, a_log, b_log)
        final = final + dense
    return kernel, f, g, final if report is None else report + final


def _complete_support(x, y, eps, settings, a_log, b_log, kernel, f, g, final):
    """Check a converged sparse solve against the dense kernel and add what its support lacks.

    A truncated support can converge to the solution of a *different* problem: the pairs the full
    plan needs were pruned at a coarser level and cannot come back (cross to spiral, N = 2,000:
    2.4% of the dense plan's mass, all of it for 40 rows, lay outside the support; the map was 1.28x
    the dense kernel's error, and tighter tolerances did not move it). One dense soft-min of each
    side (``O(N M)``, tiled) measures the mass each row and column has outside the support: its
    log is the gap between the dense and the sparse soft-min, in units of eps. Rows and columns
    above ``tolerance`` get every pair of plan ratio above ``exp(-_TRUNCATE)`` and the final level
    continues; after ``_SUPPORT_ROUNDS`` the solve is reported unconverged (dense fallback)."""
    for _ in range(_SUPPORT_ROUNDS):
        if not final.converged:
            return kernel, f, g, final
        dense = DenseKernel(x, y)
        f_dense = dense.softmin(eps, b_log + g / eps)
        g_dense = dense.transpose().softmin(eps, a_log + f / eps)
        bad_rows = ((f - f_dense) / eps > settings.tolerance).nonzero().squeeze(1)
        bad_cols = ((g - g_dense) / eps > settings.tolerance).nonzero().squeeze(1)
        if bad_rows.numel() == 0 and bad_cols.numel() == 0:
            return kernel, f, g, final
        rows_a, cols_a = _plan_pairs(x[bad_rows], y, f_dense[bad_rows], g, eps)
        cols_b, rows_b = _plan_pairs(y[bad_cols], x, g_dense[bad_cols], f, eps)
        rows = torch.cat([kernel.rows, bad_rows[rows_a], rows_b])
        cols = torch.cat([kernel.cols, cols_a, bad_cols[cols_b]])
        pairs = torch.unique(rows * y.shape[0] + cols)
        if pairs.numel() > _DENSE_SHARE * x.shape[0] * y.shape[0]:
            # a plan this spread out (far-apart clouds: 57 ms per sparse soft-min at N = 2,000, more than
            # the dense tiles) is cheaper on the dense kernel, warm from the same potentials
            kernel = dense
        else:
            kernel = SparseKernel(x, y, pairs // y.shape[0], pairs % y.shape[0])
        f, g, more = sinkhorn_loop(kernel, a_log, b_log, [eps], settings, f, g)
        final = final + more
        if kernel is dense:  # the full support: nothing left to check
            return kernel, f, g, final
    return kernel, f, g, final._replace(converged=False)


def _plan_pairs(points, others, potential, other_potential, eps, chunk=256, truncate=_TRUNCATE):
    """Pairs ``(k, j)`` with plan ratio ``exp((potential_k + other_j - |points_k - others_j|^2 / 2) / eps)``
    at least ``exp(-_TRUNCATE)``, in chunks of ``points``."""
    rows, cols = [], []
    for start in range(0, points.shape[0], chunk):
        cost = 0.5 * torch.cdist(points[start:start + chunk], others).pow(2)
        score = (potential[start:start + chunk, None] + other_potential[None, :] - cost) / eps
        row, col = (score >= -truncate).nonzero(as_tuple=True)
        rows.append(row + start)
        cols.append(col)
    empty = torch.empty(0, dtype=torch.long, device=points.device)
    return (torch.cat(rows), torch.cat(cols)) if rows else (empty, empty)


def _dense_solve(x, y, eps, scaling, settings, a_log, b_log):
    kernel = DenseKernel(x, y)
    f, g, report = sinkhorn_loop(kernel, a_log, b_log, epsilon_schedule(diameter(x, y), eps, scaling), settings)
    return kernel, f, g, report


def coarse_start(x, y, eps, scaling, a_log, b_log, settings, with_support=True):
    """Potentials ``f (N,)``, ``g (M,)`` and barycentric targets ``(N, d)`` at the scale of grid
    clusters of about ``CLUSTER_SIZE`` particles (annealed on the clusters, then extrapolated to the
    particles through the coarse kernel); also the cluster side and the coarse solve's report.

    Where the cluster side is above the blur, the particles anneal further and a loose coarse solve
    is enough. Where it is not (many particles: N = 1e4 at 5% blur), the clusters are solved at the
    final eps itself, and the particles only run the final level from there: that coarse solve is
    converged to ``settings`` (about 1/6 of the points). Loose, it left the particles 660 sparse
    iterations from converged on a uniform square to a banana (305 s); converged, 46 (18 s).
    There, with ``with_support``, the last item is the clusters' plan support for the fine kernel
    (particle ``(rows, cols)``, or ``DENSE``); otherwise it is ``None``."""
    # the finer of the two clouds' scales: one joint scale put a tight source (sd 0.05 against a
    # target of radius 2) into a handful of cells, and the map came out 2.8x the dense kernel's error
    # (a point mass, or a cloud on a lower-dimensional lattice, has no scale of its own: the other's)
    scales = [scale for scale in (_occupied_cells_scale(x, x.shape[0] / _CLUSTER_SIZE),
                                  _occupied_cells_scale(y, y.shape[0] / _CLUSTER_SIZE)) if scale > 0]
    cell = max(min(scales, default=0.0), math.sqrt(eps))
    label_x, centre_x, count_x = _grid_clusters(x, cell, a_log.exp())
    label_y, centre_y, count_y = _grid_clusters(y, cell, b_log.exp())
    eps_coarse = max(eps, cell ** 2)
    coarse_settings = settings if eps_coarse <= eps else _COARSE
    if centre_x.shape[0] + centre_y.shape[0] < _SHRINK * (x.shape[0] + y.shape[0]):
        coarse, f_c, g_c, report = multiscale_solve(centre_x, centre_y, eps_coarse, scaling, coarse_settings, None,
                                                    count_x.log(), count_y.log(), check_support=False)
    else:  # clustering did not shrink the problem: recursing would never end (was a RecursionError)
        coarse, f_c, g_c, report = _dense_solve(centre_x, centre_y, eps_coarse, scaling, coarse_settings,
                                                count_x.log(), count_y.log())
    f, predicted = _extrapolate(coarse, label_x, x, centre_y, count_y.log() + g_c / eps_coarse, eps_coarse)
    g = _extrapolate(coarse.transpose(), label_y, y, centre_x, count_x.log() + f_c / eps_coarse, eps_coarse,
                     targets=False)
    # Clusters solved at the final eps also say which particle pairs the plan needs: all pairs of
    # every cluster pair with a non-negligible coarse plan. Without them the fine kernel held only
    # the pairs near each particle's predicted target, which misses a second branch where a cluster
    # straddles a tear of the map (mixture to ring, N = 3e4: map error 0.0667 against 0.0346, and
    # the dense check re-converged for 332 s adding 91% more pairs; N = 1e4: 0.0633 against 0.0309)
    # (``support`` is DENSE when those pairs are more than _DENSE_SHARE of all pairs)
    support = None
    if eps_coarse <= eps and with_support:
        cluster_rows, cluster_cols = _plan_pairs(centre_x, centre_y, f_c, g_c, eps_coarse, truncate=_COARSE_TRUNCATE)
        # the clusters' masses are shares of each cloud: this is the share of all particle pairs
        dense = float((count_x[cluster_rows] * count_y[cluster_cols]).sum()) > _DENSE_SHARE
        support = DENSE if dense else _member_pairs(cluster_rows, cluster_cols, label_x, label_y)
    return f, g, predicted, cell, report, support


def _member_pairs(cluster_rows, cluster_cols, label_x, label_y):
    """Every particle pair ``(i, j)`` whose clusters ``(label_x[i], label_y[j])`` are a listed pair."""
    entry, rows = _members(label_x, cluster_rows)
    entry, cols = _members(label_y, cluster_cols[entry])
    return rows[entry], cols


def _members(labels, clusters):
    """The particles of each listed cluster: ``(entry (P,), particle (P,))``, entry ``k`` of
    ``clusters (K,)`` repeated once for every particle ``i`` with ``labels[i] == clusters[k]``."""
    order = labels.argsort()
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    sizes = counts[clusters]
    entry = torch.repeat_interleave(torch.arange(clusters.numel(), device=labels.device), sizes)
    offset = torch.arange(entry.numel(), device=labels.device) - (torch.cumsum(sizes, 0) - sizes)[entry]
    return entry, order[starts[clusters][entry] + offset]


def _level_only(settings):
    """An annealing level run as the last level of its own loop: the level's stopping rule."""
    return settings._replace(tolerance=settings.level_tolerance, max_iterations=settings.level_iterations, omega=1.0)


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


def truncated_kernel(x, y, predicted, radius, count=_MIN_PAIRS, support=None):
    """Sparse kernel: pairs within ``radius`` of the ``predicted`` targets, topped up so that every
    row and every column has at least ``count`` pairs (its nearest partners).

    The top-up keeps the support able to carry the marginals where the coarse prediction is off
    (tails, thin features): with one forced pair per lonely column, two rows can end up sharing
    one column and the error sticks at log 2 (seen on a curved cloud at N = 2,000)."""
    rows, cols = _neighbour_pairs(predicted, y, radius)
    if support is not None:
        rows, cols = torch.cat([rows, support[0]]), torch.cat([cols, support[1]])
    thin_rows = (torch.bincount(rows, minlength=x.shape[0]) < count).nonzero().squeeze(1)
    thin_cols = (torch.bincount(cols, minlength=y.shape[0]) < count).nonzero().squeeze(1)
    near_cols = _nearest(predicted[thin_rows], y, count)            # (R, count) columns
    near_rows = _nearest(y[thin_cols], predicted, count)            # (C, count) rows
    rows = torch.cat([rows, thin_rows.repeat_interleave(near_cols.shape[1]), near_rows.reshape(-1)])
    cols = torch.cat([cols, near_cols.reshape(-1), thin_cols.repeat_interleave(near_rows.shape[1])])
    pairs = torch.unique(rows * y.shape[0] + cols)
    return SparseKernel(x, y, pairs // y.shape[0], pairs % y.shape[0])


def _nearest(queries, points, count, chunk=2048):
    """Indices ``(Q, count)`` of the ``count`` nearest ``points`` to each query, in chunks of queries."""
    count = min(count, points.shape[0])
    if queries.shape[0] == 0:
        return torch.empty((0, count), dtype=torch.long, device=points.device)
    return torch.cat([torch.cdist(queries[start:start + chunk], points).topk(count, largest=False).indices
                      for start in range(0, queries.shape[0], chunk)])


def _occupied_cells_scale(points, count):
    """Side of the grid cells that leaves about ``count`` occupied cells (two refinements), over the
    axes along which the cloud has an extent; 0 for a point mass."""
    extent = points.max(0).values - points.min(0).values
    spread = extent > 1e-9 * float(extent.max())
    dim = int(spread.sum())
    if float(extent.max()) <= 0 or dim == 0:
        return 0.0
    cell = float(extent[spread].prod()) ** (1 / dim) / count ** (1 / dim)
    for _ in range(2):
        occupied = _grid_clusters(points, cell)[2].numel()
        cell *= (occupied / count) ** (1 / dim)
    return cell


def _extrapolate(coarse, labels, points, centres, h, eps, targets=True):
    """Softmin (and barycentre, if ``targets``) of ``points`` against the coarse targets their
    cluster is paired with."""
    if isinstance(coarse, DenseKernel):
        kernel = DenseKernel(points, centres)
    else:
        # pairs (i, J) for every coarse pair (label_i, J)
        pair, rows = _members(labels, coarse.rows)
        kernel = SparseKernel(points, centres, rows, coarse.cols[pair])
    if not targets:
        return kernel.softmin(eps, h)
    return kernel.softmin(eps, h), kernel.barycentre(eps, h, centres)
