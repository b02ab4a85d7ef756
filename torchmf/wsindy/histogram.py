r"""Histogram density :math:`U_t` of eq. (4.1) on a regular grid, and the data helpers around it.

The histogram is the nearest-grid-point deposit of :meth:`torchmf.grid.Grid.deposit`
(``scheme="ngp"``): one scatter-add over all ``M x L x N`` particles, :math:`O(N)`. Masses are
averaged over the ``M`` experiments (Algorithm 4.1, line 5) and divided by the cell volume
:math:`h^d`, so :math:`\sum_x U_t(x) h^d = 1`.

:func:`default_grid` follows section 5 of the paper: the box extends ``3`` sample standard
deviations from the mean of the data along each axis, with 256 points in 1-D and 128 per axis
otherwise. Two rules (``rule``): ``"union"`` widens the box to the data's range plus half a cell
(every particle is counted); ``"intersection"`` (the authors' code, ``hist1storder.m``) cuts it to
the data's range, ``[max(mean - 3 sd, min), min(mean + 3 sd, max)]``, with the nodes at the centres
of ``G`` equal cells: no empty margin, and particles beyond mean +- 3 sd are cropped.

Cropping (``crop=True``): particles farther than half a cell outside the grid's box get no
mass; the density then sums to the mass kept, so :func:`mass_left_out` reads the fraction left
out per time from the density alone.

Sharded data (``sharded=True`` inside a ``torch.distributed`` process group, each rank holding
``N/P`` particles of every experiment): the grid's box comes from the pooled statistics of all
ranks and the histogram all-reduces only the ``(L, *G)`` density, so the result does not depend
on ``P`` and the traffic is independent of ``N`` (see :mod:`torchmf.distributed`).

:func:`add_measurement_noise` adds the extrinsic noise of section 5.2,
:math:`\varepsilon \sim N(0, \varepsilon^2 \|X\|_{RMS}^2)` i.i.d., with an explicit seed.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import distributed
from .._validation import check_int, check_nonnegative, check_tensor
from ..grid import Grid
from ..data import Trajectories

__all__ = ["as_positions", "default_grid", "histogram", "add_measurement_noise", "axis_statistics",
           "masked_positions", "mass_left_out", "GRID_RULES"]

GRID_RULES = ("union", "intersection")
#: a particle within this many cells of the box has its nearest node on the grid (half a cell, plus
#: round-off: the intersection grid's outermost particles sit exactly half a cell out)
REACH = 0.5 + 1e-9


def as_positions(trajectories) -> torch.Tensor:
    """Positions ``(M, L, N, d)`` from a :class:`Trajectories` or a tensor ``(M, L, N, d)`` / ``(L, N, d)``;
    NaN/inf are reported (``ValueError`` naming ``trajectories``)."""
    if isinstance(trajectories, Trajectories):
        positions = trajectories.positions
    elif isinstance(trajectories, torch.Tensor):
        positions = trajectories
    else:
        raise TypeError(f"trajectories: expected a torchmf.Trajectories or a tensor (M, L, N, d), "
                        f"but got {type(trajectories).__name__}")
    positions = check_tensor("trajectories", positions, finite=False)
    if positions.ndim == 3:
        positions = positions.unsqueeze(0)
    if positions.ndim != 4:
        raise ValueError(f"trajectories: expected positions of shape (M, L, N, d), but got {tuple(positions.shape)}")
    low, high = torch.aminmax(positions)  # NaN propagates: one fast pass instead of a full isfinite mask
    if positions.numel() and not bool(torch.isfinite(low) & torch.isfinite(high)):
        bad = int((~torch.isfinite(positions)).sum())
        raise ValueError(f"trajectories: the data contain {bad} NaN/inf coordinates; remove or impute them first")
    return positions


def default_grid(positions: torch.Tensor, shape: Optional[Union[int, Sequence[int]]] = None,
                 width: float = 3.0, sharded: bool = False, rule: str = "union") -> Grid:
    """The computational grid C of section 5: mean +- ``width`` standard deviations per axis.

    Arguments:
        positions: ``(M, L, N, d)``.
        shape: nodes per axis (default 256 in 1-D, 128 otherwise).
        width: half-width in sample standard deviations.
        sharded: pool the statistics of every rank's share (all ranks get the same grid).
        rule: ``"union"`` (at least the data's range, plus half a cell: every particle has a
            nearest node inside) or ``"intersection"`` (at most the data's range; nodes at the
            centres of ``shape`` equal cells; histogram with ``crop=True``, see the module doc).
    """
    if rule not in GRID_RULES:
        raise ValueError(f"grid_rule: expected one of {list(GRID_RULES)}, but got {rule!r}")
    dim = positions.shape[-1]
    if shape is None:
        shape = 256 if dim == 1 else 128
    statistics = _pooled_statistics if sharded else axis_statistics
    mean, std, smallest, largest = statistics(positions.reshape(-1, dim))
    sizes = [shape] * dim if isinstance(shape, int) else list(shape)
    if rule == "intersection":
        low = torch.maximum(mean - width * std, smallest).tolist()
        high = torch.minimum(mean + width * std, largest).tolist()
        half = [(b - a) / (2 * g) for a, b, g in zip(low, high, sizes)]  # nodes at the cells' centres
        return Grid([a + c for a, c in zip(low, half)], [b - c for b, c in zip(high, half)], sizes, periodic=False)
    low = torch.minimum(mean - width * std, smallest).tolist()  # a few numbers: the box is built on the host
    high = torch.maximum(mean + width * std, largest).tolist()
    margin = [(b - a) / max(g - 2, 1) for a, b, g in zip(low, high, sizes)]
    return Grid([a - m for a, m in zip(low, margin)], [b + m for b, m in zip(high, margin)], sizes, periodic=False)


def axis_statistics(points: torch.Tensor, chunk: int = 1 << 16):
    """Per-axis mean, sample standard deviation, minimum and maximum of ``points (n, d)``, each
    ``(d,)`` float64, in one pass over cache-sized chunks (shifted by the first point so that the
    variance does not cancel; per-axis reductions of an ``(n, d)`` array are slow in torch, those of
    the transposed chunk are contiguous)."""
    count, dim = points.shape
    reference = points[:1].T.double()  # (d, 1)
    total = torch.zeros(dim, dtype=torch.float64, device=points.device)
    squares = torch.zeros_like(total)
    lows, highs = [], []
    for block in points.split(chunk):
        shifted = block.T.double() - reference
        low, high = torch.aminmax(shifted, dim=1)
        lows.append(low)
        highs.append(high)
        total += shifted.sum(1)
        squares += (shifted * shifted).sum(1)
    mean = total / count
    variance = (squares - count * mean * mean).clamp_min(0) / max(count - 1, 1)
    reference = reference[:, 0]
    return (mean + reference, variance.sqrt(), torch.stack(lows).amin(0) + reference,
            torch.stack(highs).amax(0) + reference)


def _pooled_statistics(points: torch.Tensor):
    """:func:`axis_statistics` of the union of every rank's ``points (n_r, d)`` (a few numbers per rank)."""
    mean, std, low, high = axis_statistics(points)
    if not distributed.is_sharded():
        return mean, std, low, high
    count = points.shape[0]
    sums = torch.cat([mean.new_tensor([count]), count * mean])
    distributed.all_reduce_sum(sums)
    total, pooled_mean = sums[0], sums[1:] / sums[0]
    spread = (count - 1) * std * std + count * (mean - pooled_mean) ** 2  # pooled sum of squared deviations
    distributed.all_reduce_sum(spread)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    return pooled_mean, (spread / (total - 1).clamp_min(1)).sqrt(), low, high


def histogram(positions: torch.Tensor, grid: Grid, check: bool = True, sharded: bool = False,
              weights: Optional[torch.Tensor] = None, crop: bool = False) -> torch.Tensor:
    """Histogram density averaged over experiments.

    Arguments:
        positions: ``(M, L, N, d)`` (finite).
        grid: a free-space :class:`~torchmf.grid.Grid` whose box, widened by half a cell, contains
            every particle (each particle's nearest node is a node of the grid), unless ``crop``.
        check: verify that every particle lies in the box (skip only for a grid built from these
            positions, e.g. by :func:`default_grid`).
        sharded: ``positions`` is this rank's share ``(M, L, N_r, d)`` of a sharded ensemble: the
            per-rank masses are weighted by ``N_r / N`` and all-reduced (one ``(L, *G)`` all-reduce);
            a rank whose particles leave the box makes every rank raise.
        weights: optional ``(M, L, N)`` particle masses, each frame summing to 1 (missing tracked
            particles: :meth:`torchmf.Trajectories.weights`, zero where not observed); default ``1/N``.
        crop: particles farther than half a cell outside the box get no mass (instead of an
            error); :func:`mass_left_out` of the result is the fraction left out per time.

    Returns:
        ``(L, G_1, ..., G_d)`` density in the dtype of ``positions``.

    Raises ``ValueError`` naming ``trajectories`` when particles lie outside the grid's box.
    """
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
    if grid.periodic:
        raise ValueError("grid: expected a free-space grid (periodic=False); WSINDy convolves on the C - C grid")
    if grid.dim != positions.shape[-1]:
        raise ValueError(f"grid: expected a {positions.shape[-1]}-D grid for the data, but got {grid.dim}-D")
    if not isinstance(crop, bool):
        raise TypeError(f"crop: expected a bool, but got {type(crop).__name__}")
    # a particle within half a cell of the box has its nearest node on the grid: it is counted
    failure = _outside_error(positions, grid, slack=REACH) if check and not crop else None
    if sharded:
        distributed.raise_together(failure)
    elif failure is not None:
        raise failure
    # experiment by experiment into one (L, *G) array: a (M, L, *G) intermediate would be M times larger
    if weights is not None and sharded:
        raise ValueError("weights: a masked (weighted) histogram is not supported with sharded=True")
    def masses_of(experiment):  # (L, *G), each time sums to 1
        mass = None if weights is None else weights[experiment]
        if crop and _outside_error(positions[experiment], grid, slack=REACH) is not None:
            mass = _kept(positions[experiment], grid) * (1 / positions.shape[2] if mass is None else mass)
        return grid.deposit(positions[experiment], mass, scheme="ngp", check=False)
    masses = masses_of(0)
    for experiment in range(1, positions.shape[0]):
        masses += masses_of(experiment)
    if sharded and distributed.is_sharded():
        local = positions.shape[2]
        masses *= local / distributed.global_count(local, device=positions.device)
        distributed.all_reduce_sum(masses)
    return masses / (positions.shape[0] * grid.cell_volume)


def masked_positions(trajectories: Trajectories):
    """Positions, weights and observed points of a :class:`Trajectories` with a ``mask`` (missing entries).

    Returns ``(positions (M, L, N, d), weights (M, L, N), observed (n, d))``: missing entries are
    placed on an observed particle of the same frame (inside any grid holding the data) with weight 0,
    the observed ones weigh ``1 / n_observed`` of their frame."""
    return trajectories.filled_positions(), trajectories.weights(), trajectories.positions[trajectories.mask]


def _kept(positions: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``(L, N)``: 1 for particles within :data:`REACH` cells of the box of ``grid`` (their nearest node
    is on the grid), 0 for the rest (the complement of :func:`_outside_error`'s test)."""
    inside = torch.ones(positions.shape[:-1], dtype=torch.bool, device=positions.device)
    for axis, (low, high, step) in enumerate(zip(grid.lower, grid.upper, grid.spacing)):
        coordinate = positions[..., axis]
        inside &= (coordinate >= low - REACH * step) & (coordinate <= high + REACH * step)
    return inside.to(positions.dtype)


def mass_left_out(density: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Fraction of the mass outside ``grid`` at each time, ``(L,)``, of a (cropped) histogram ``(L, *G)``."""
    kept = density.reshape(density.shape[0], -1).sum(1) * grid.cell_volume
    return (1 - kept).clamp_min(0)


def _outside_error(positions: torch.Tensor, grid: Grid, slack: float = 0.0) -> Optional[ValueError]:
    """The ``ValueError`` for particles outside ``grid``'s box widened by ``slack`` cells, or None (one
    min/max pass; the count only on failure)."""
    flat = positions.reshape(-1, positions.shape[-1])
    lower = flat.new_tensor([a - slack * h for a, h in zip(grid.lower, grid.spacing)])
    upper = flat.new_tensor([b + slack * h for b, h in zip(grid.upper, grid.spacing)])
    low, high = torch.aminmax(flat, dim=0)
    if not bool((low < lower).any() | (high > upper).any()):
        return None
    outside = ((flat < lower) | (flat > upper)).any(-1)
    return ValueError(
        f"trajectories: {int(outside.sum())} particle positions lie outside the grid's domain "
        f"lower={list(grid.lower)}, upper={list(grid.upper)}; widen the grid (nothing is clipped)")


def add_measurement_noise(trajectories: Union[Trajectories, torch.Tensor], ratio: float, seed: int = 0,
                          per_time: bool = False):
    r"""Extrinsic noise :math:`Y = X + \varepsilon`, :math:`\varepsilon \sim N(0, \text{ratio}^2 \|X\|_{RMS}^2)` i.i.d.

    :math:`\|X\|_{RMS}` is the root mean square of all coordinates of experiment ``m`` over all times
    (so :math:`\|\varepsilon\|_F / \|X\|_F \approx` ``ratio`` with both stretched into column vectors, as
    in section 5.2 of the paper and its authors' noise generator). ``per_time=True`` uses the RMS of
    each time instead (:math:`\|X_t\|_{RMS}`, the paper's notation read literally): the noise level
    then changes in time with the spread of the data, and the change of the smoothing it causes,
    :math:`\tfrac12 \tfrac{d}{dt}(\varepsilon^2\|X_t\|^2_{RMS})\,\Delta u`, is itself a (negative)
    diffusion that the regression absorbs into the drift; see docs/benchmarks.md.

    Arguments:
        trajectories: :class:`Trajectories` or positions ``(M, L, N, d)``.
        ratio: noise ratio :math:`\varepsilon \ge 0`.
        seed: seed of the generator on the data's device.
        per_time: scale by the RMS of each time (default: one RMS per experiment).

    Returns:
        the same kind of object as the input, with noisy positions.
    """
    ratio = check_nonnegative("ratio", ratio)
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(per_time, bool):
        raise TypeError(f"per_time: expected a bool, but got {type(per_time).__name__}")
    positions = as_positions(trajectories)
    generator = torch.Generator(device=positions.device).manual_seed(seed)
    dims = (-2, -1) if per_time else (-3, -2, -1)
    rms = positions.pow(2).mean(dim=dims, keepdim=True).sqrt()
    noise = torch.randn(positions.shape, generator=generator, device=positions.device, dtype=positions.dtype)
    noisy = positions + ratio * rms * noise
    if isinstance(trajectories, Trajectories):
        meta = dict(trajectories.meta, measurement_noise={"ratio": ratio, "seed": seed, "per_time": per_time})
        return Trajectories(noisy, trajectories.times, meta)
    return noisy
