r"""The smallest reduced costs of every row, found without forming the ``N x M`` cost matrix.

For clouds ``x (N, d)``, ``y (M, d)`` and potentials ``f (N,)``, ``g (M,)`` the reduced cost of a pair is

.. math:: r_{ij} = |x_i - y_j|^2 - f_i - g_j = a_i + b_j - 2 x_i \cdot y_j,
   \quad a_i = |x_i|^2 - f_i, \quad b_j = |y_j|^2 - g_j .

Both clouds are cut into blocks of ``BLOCK`` to ``2 BLOCK`` points (median splits, which follow the
density). With block centres :math:`\bar x_A`, :math:`\bar y_B`, radii :math:`R_A`, :math:`R_B`, and
:math:`x_i = \bar x_A + u_i`, :math:`y_j = \bar y_B + v_j`, Cauchy-Schwarz on :math:`u_i \cdot v_j` gives
for every pair of the block pair

.. math:: r_{ij} \ge \min_{i \in A}(a_i - 2 u_i \cdot \bar y_B) + \min_{j \in B}(b_j - 2 \bar x_A \cdot v_j)
   - 2 \bar x_A \cdot \bar y_B - 2 R_A R_B .

The two minima cost ``O((N + M) x blocks)``. The bound is loose by :math:`2 R_A R_B` whatever the
displacement (a bound on distances alone would be loose by the gradient of the potential times the
block size, and a lifted k-d tree on :math:`\sqrt{c - g_j}` was as slow as the full scan at N = 3e4).
A block pair is formed (by the direct formula, which decides) only when its bound does not rule it
out, so the answer is exact: every pair is either formed or proved above the cut. Memory: the
``(N / BLOCK) x (M / BLOCK)`` bounds and one block's tile.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._validation import check_int

__all__ = ["smallest_reduced", "median_labels", "BLOCK"]

BLOCK = 16             # points per block (median splits give BLOCK to 2 BLOCK); at N = 3e4: 128: 18% of
#                        the block pairs formed, 28 s per search; 32: 3.8%, 6.3 s; 16: 1.7%, 4.5 s
_CHUNK_ENTRIES = 2 ** 22  # entries per chunk of the bound passes (32 MB in float64)
_MARGIN = 1e-11        # relative safety margin of the bounds for the rounding of the two minima


def median_labels(points: torch.Tensor, size: float) -> torch.Tensor:
    """Cluster label ``(N,)`` of every row of ``points (N, d)``: clusters of ``size`` to ``2 size``
    points, made by splitting every cluster at the median of its widest axis (a k-d tree)."""
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
    return labels


class _Blocks:
    """A cloud cut into blocks: ``order`` (points sorted by block), ``starts`` ``(K + 1,)`` offsets into
    it, ``centres (K, d)``, ``radii (K,)``, and ``offsets (N,)``: each point minus its block's centre."""

    def __init__(self, points: torch.Tensor):
        labels = median_labels(points, BLOCK)
        _, labels = torch.unique(labels, return_inverse=True)  # empty clusters dropped
        self.order = labels.argsort(stable=True)
        sizes = torch.bincount(labels)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.centres = torch.zeros((sizes.numel(), points.shape[1]), dtype=points.dtype).index_add_(
            0, labels, points) / sizes[:, None]
        self.offsets = points - self.centres[labels]
        self.radii = torch.zeros(sizes.numel(), dtype=points.dtype).scatter_reduce(
            0, labels, self.offsets.norm(dim=1), "amax")

    def members(self, blocks: torch.Tensor) -> torch.Tensor:
        """The points of ``blocks`` (a long tensor of block numbers), block after block."""
        lengths = self.starts[blocks + 1] - self.starts[blocks]
        first = torch.repeat_interleave(self.starts[blocks] - (lengths.cumsum(0) - lengths), lengths)
        return self.order[first + torch.arange(first.numel())]


def _block_minima(offsets, weights, order, starts, centres):
    """``(K, L)``: for every block ``A`` of the cloud (its points sorted by ``order``, cut at ``starts``)
    and every other centre ``c_B (L, d)``: ``min_{i in A} weights_i - 2 offsets_i . c_B``."""
    blocks = starts.numel() - 1
    out = torch.empty((blocks, centres.shape[0]), dtype=offsets.dtype)
    per_chunk = max(1, _CHUNK_ENTRIES // max(1, centres.shape[0]))
    block = 0
    while block < blocks:
        # whole blocks per chunk, at least one
        last = int(torch.searchsorted(starts, starts[block] + per_chunk, right=True)) - 1
        last = min(blocks, max(block + 1, last))
        rows = order[starts[block]:starts[last]]
        values = torch.addmm(weights[rows, None], offsets[rows], centres.T, alpha=-2.0)
        segment = (starts[block + 1:last + 1] - starts[block:last])
        out[block:last] = torch.segment_reduce(values, "min", lengths=segment, axis=0)
        block = last
    return out


def _bounds(x, y, a, b, row_blocks, col_blocks):
    """Lower bound ``(K, L)`` of the reduced cost on every pair of row block and column block."""
    row_part = _block_minima(row_blocks.offsets, a, row_blocks.order, row_blocks.starts, col_blocks.centres)
    col_part = _block_minima(col_blocks.offsets, b, col_blocks.order, col_blocks.starts, row_blocks.centres)
    bound = row_part + col_part.T
    bound -= 2.0 * row_blocks.centres @ col_blocks.centres.T
    bound -= 2.0 * row_blocks.radii[:, None] * col_blocks.radii[None, :]
    # rounding of a_i, b_j and the products: a relative margin, on the safe side (more pairs formed)
    size = float(a.abs().max() + b.abs().max()) + 2.0 * float(x.norm(dim=1).max() * y.norm(dim=1).max())
    return bound - _MARGIN * (1.0 + size)


def _tile(x, y, f, g, rows, cols):
    """Reduced costs ``(len(rows), len(cols))`` by the direct formula (the arcs' costs use the same)."""
    # one coordinate at a time: a sum over a last axis of length d ran 3x slower than the tile itself
    x_rows, y_cols = x[rows], y[cols]
    tile = (x_rows[:, 0, None] - y_cols[None, :, 0]).pow_(2)
    for axis in range(1, x.shape[1]):
        tile += (x_rows[:, axis, None] - y_cols[None, :, axis]).pow_(2)
    tile -= f[rows, None]
    tile -= g[None, cols]
    return tile


def smallest_reduced(x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, g: torch.Tensor, count: int,
                     below: Optional[float] = None):
    """For every row ``i`` of ``x (N, d)``: the ``count`` smallest reduced costs ``r_ij`` over all rows
    ``j`` of ``y (M, d)`` (``below=None``), or the ``count`` smallest of those ``< below``.

    Returns flat tensors ``(rows, cols, values)`` (long, long, ``x``'s dtype): up to ``count`` entries
    per row. CPU tensors; exact up to the rounding of the direct formula."""
    _check_inputs(x, y, f, g)
    count = min(check_int("count", count, minimum=1), y.shape[0])
    a = x.pow(2).sum(1) - f
    b = y.pow(2).sum(1) - g
    row_blocks, col_blocks = _Blocks(x), _Blocks(y)
    bounds = _bounds(x, y, a, b, row_blocks, col_blocks)
    blocks_needed = -(-count // int((col_blocks.starts[1:] - col_blocks.starts[:-1]).min()))  # ceil
    found_rows, found_cols, found_values = [], [], []
    for block in range(row_blocks.starts.numel() - 1):
        rows = row_blocks.members(torch.tensor([block]))
        cut = below
        if cut is None:
            # the blocks of least bound, enough for count columns: their count-th smallest value, worst
            # over the rows, is a cut that every row's count smallest lie under
            first = bounds[block].topk(min(blocks_needed, bounds.shape[1]), largest=False).indices
            cols = col_blocks.members(first)
            cut = float(_tile(x, y, f, g, rows, cols).kthvalue(count, dim=1).values.max())
        chosen = (bounds[block] <= cut).nonzero().squeeze(1)
        if chosen.numel() == 0:
            continue
        cols = col_blocks.members(chosen)
        tile = _tile(x, y, f, g, rows, cols)
        values, index = tile.topk(min(count, cols.numel()), dim=1, largest=False)
        keep = values < below if below is not None else torch.ones_like(values, dtype=torch.bool)
        found_rows.append(rows[:, None].expand_as(index)[keep])
        found_cols.append(cols[index][keep])
        found_values.append(values[keep])
    if not found_rows:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone(), torch.empty(0, dtype=x.dtype)
    rows, cols, values = torch.cat(found_rows), torch.cat(found_cols), torch.cat(found_values)
    order = rows.argsort(stable=True)
    return rows[order], cols[order], values[order]


def _check_inputs(x, y, f, g):
    """Point clouds ``(N, d)`` and ``(M, d)`` with potentials ``(N,)`` and ``(M,)``."""
    for name, points in (("x", x), ("y", y)):
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[0] == 0:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"{name}: expected a non-empty tensor of shape (N, d), but got {shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: expected points of dimension {x.shape[1]} like x, but got {y.shape[1]}")
    for name, potential, points in (("f", f, x), ("g", g, y)):
        if not isinstance(potential, torch.Tensor) or tuple(potential.shape) != (points.shape[0],):
            shape = tuple(potential.shape) if isinstance(potential, torch.Tensor) else type(potential).__name__
            raise ValueError(f"{name}: expected a tensor of shape ({points.shape[0]},), but got {shape}")
