r"""The two cost kernels every Sinkhorn backend iterates with.

A kernel holds two clouds ``x (N, d)``, ``y (M, d)`` and the cost :math:`C_{ij} = |x_i - y_j|^2 / 2`
(all pairs, tile by tile: :class:`DenseKernel`; a list of pairs: :class:`SparseKernel`) and offers

- ``softmin(eps, h) (N,)``: :math:`-\varepsilon \log \sum_j \exp(h_j - C_{ij}/\varepsilon)`,
- ``barycentre(eps, h, values) (N, k)``: rows of the softmax of :math:`h_j - C_{ij}/\varepsilon` applied
  to ``values (M, k)``,
- ``transpose()``: the same cost seen from ``y``.
"""
from __future__ import annotations

import math

import torch

from .routing import tile_rows

__all__ = ["DenseKernel", "SparseKernel", "centred", "uniform_log", "exp_shifted"]


def centred(x, y):
    """Shift both clouds by a common point (the cost is invariant; rounding of |x|^2 is not)."""
    shift = 0.5 * (x.mean(0) + y.mean(0))
    return x - shift, y - shift, shift


def uniform_log(points):
    return torch.full((points.shape[0],), -math.log(points.shape[0]), dtype=points.dtype, device=points.device)


def exp_shifted(scores):
    """``exp`` of max-shifted scores (<= 0), in place. Scores below -60 weigh < 1e-26 and are
    clamped first on CPU: exp of large negative float32 values takes a slow path on x86 CPUs (4x
    slower). GPUs have no such path, and the clamp would be one more pass over the tile."""
    if scores.is_cuda:
        return scores.exp_()
    return scores.clamp_(min=-60.0).exp_()


class DenseKernel:
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
        return DenseKernel(self.y, self.x, self.tiling)

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
            out[rows] = exp_shifted(scores.sub_(peak)).sum(1).log_().add_(peak.squeeze(1))
        return self.x_half_square - eps * out

    def barycentre(self, eps, h, values):
        """Rows of the softmax of :math:`h_j - C_{ij}/\varepsilon` applied to ``values (M, k)``."""
        out = torch.empty((self.x.shape[0], values.shape[1]), dtype=values.dtype, device=values.device)
        for rows, scores in self._tiles(eps, h):
            weights = exp_shifted(scores.sub_(scores.amax(1, keepdim=True)))
            out[rows] = (weights @ values) / weights.sum(1, keepdim=True)
        return out


class SparseKernel:
    """Cost on a list of pairs ``(rows[k], cols[k])`` only: the truncated kernel.

    The soft-mins run on a padded row layout (built on first use): rows grouped by their number of
    pairs (groups a factor ``_BUCKET_GROWTH`` wide), each group a dense ``(R, width)`` block of
    column indices and costs (``inf`` where padded), so that a soft-min is one gather and a
    row-wise log-sum-exp per group. Scatter reductions over the flat pair list did the same work
    3.6x slower (N = 1e4, 570 pairs per row: 0.16 s against 0.044 s per soft-min, one thread).
    """

    def __init__(self, x, y, rows, cols, cost=None):
        self.x, self.y, self.rows, self.cols = x, y, rows, cols
        self.cost = cost if cost is not None else 0.5 * (x[rows] - y[cols]).pow(2).sum(-1)
        self._blocks = None
        self._transposed = None

    def transpose(self):
        # kept, so that its padded layout is built once per kernel (no back-reference: a cycle would
        # hold both layouts, gigabytes at N = 3e4, until the cyclic collector runs)
        if self._transposed is None:
            self._transposed = SparseKernel(self.y, self.x, self.cols, self.rows, self.cost)
        return self._transposed

    def _layout(self):
        """``[(row ids (R,), columns (R, width), costs (R, width))]``, padding cost ``inf``."""
        if self._blocks is None:
            self._blocks = _padded_blocks(self.rows, self.cols, self.cost, self.x.shape[0])
        return self._blocks

    def _block_scores(self, eps, h):
        """Per block: row ids, max-shifted weights ``exp(score - peak)`` ``(R, width)`` and peaks ``(R,)``."""
        for row_ids, columns, costs in self._layout():
            scores = torch.take(h, columns).sub_(costs, alpha=1.0 / eps)
            peak = scores.amax(1, keepdim=True)
            yield row_ids, exp_shifted(scores.sub_(peak)), peak.squeeze(1), columns

    def softmin(self, eps, h):
        # a row without pairs has soft-min +inf (an empty log-sum-exp)
        out = torch.full((self.x.shape[0],), torch.inf, dtype=h.dtype, device=h.device)
        for row_ids, weights, peak, _ in self._block_scores(eps, h):
            out[row_ids] = -eps * (weights.sum(1).log_() + peak)
        return out

    def barycentre(self, eps, h, values):
        out = torch.zeros((self.x.shape[0], values.shape[1]), dtype=values.dtype, device=values.device)
        for row_ids, weights, _, columns in self._block_scores(eps, h):
            weights = weights / weights.sum(1, keepdim=True)
            out[row_ids] = torch.einsum("rw,rwk->rk", weights, values[columns])
        return out

    def prune(self, eps, f, g, truncate, keep_best=8):
        """Drop pairs whose plan ratio :math:`\\pi_{ij}/(a_i b_j)` is below ``exp(-truncate)``,
        keeping each row's and column's ``keep_best`` best pairs.

        The floor matters when the blur is near the particle spacing: the plan is then almost a
        permutation, a ratio cut leaves one to three pairs per row, and a support that thin can
        barely carry the marginals (two rows sharing the same two columns: Sinkhorn stalls)."""
        score = (f[self.rows] + g[self.cols] - self.cost) / eps
        keep = score >= -truncate
        keep |= _best_pairs(score, self.rows, self.x.shape[0], keep_best)
        keep |= _best_pairs(score, self.cols, self.y.shape[0], keep_best)
        return SparseKernel(self.x, self.y, self.rows[keep], self.cols[keep], self.cost[keep])


_BUCKET_GROWTH = 1.25  # rows padded to at most 1.25x their own number of pairs


def _padded_blocks(rows, cols, cost, size):
    """Group the pairs by row, and the rows by count (geometric buckets): see :class:`SparseKernel`."""
    order = torch.argsort(rows, stable=True)
    sorted_cols, sorted_cost = cols[order], cost[order]
    counts = torch.bincount(rows, minlength=size)
    starts = torch.cumsum(counts, 0) - counts
    occupied = (counts > 0).nonzero().squeeze(1)
    bucket = torch.ceil(torch.log(counts[occupied].double()) / math.log(_BUCKET_GROWTH) - 1e-9).long()
    blocks = []
    for value in torch.unique(bucket).tolist():
        row_ids = occupied[bucket == value]
        width = int(counts[row_ids].max())
        offsets = torch.arange(width, device=rows.device)
        inside = offsets < counts[row_ids, None]
        positions = torch.where(inside, starts[row_ids, None] + offsets, 0)
        blocks.append((row_ids, sorted_cols[positions], torch.where(inside, sorted_cost[positions], torch.inf)))
    return blocks


def _best_pairs(score, index, size, count):
    """Mask of the ``count`` highest scores within each group of ``index`` (ties broken by order)."""
    order = torch.argsort(score, descending=True)
    order = order[torch.argsort(index[order], stable=True)]
    grouped = index[order]
    sizes = torch.bincount(grouped, minlength=size)
    rank = torch.arange(order.numel(), device=score.device) - (torch.cumsum(sizes, 0) - sizes)[grouped]
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep[order[rank < count]] = True
    return keep
