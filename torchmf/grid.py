r"""Regular grids: particle deposit, interpolation back to particles, FFT convolution.

One implementation serves the grid interaction force, the nudging velocity, smoothed-density
metrics and the WSINDy histogram.

A :class:`Grid` is either

- *free space* (``periodic=False``): ``G_i`` nodes :math:`x_j = a_i + j h_i`, ``j = 0..G_i-1``,
  :math:`h_i = (b_i - a_i)/(G_i - 1)`; particles must lie in :math:`[a, b]` (never clipped);
  convolutions are linear (zero-padded to ``2 G_i``);
- *periodic* (``periodic=True``): the torus :math:`[a, b)` with ``G_i`` nodes, :math:`h_i = (b_i - a_i)/G_i`;
  positions are wrapped; convolutions are circular, kernels evaluated at minimum-image offsets.

Shapes: positions ``(..., N, d)``; a deposited field ``(..., G_1, ..., G_d)``; a vector field
``(..., G_1, ..., G_d, c)``; batch dimensions ``...`` (experiments) are kept separate.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._memory import check_fits
from ._validation import check_int, check_points, check_tensor

__all__ = ["Grid", "GridConvolution"]

#: Particles per chunk of the nearest-grid-point deposit on CPUs (temporaries of a few MB stay cached).
DEPOSIT_CHUNK = 1 << 17


class Grid:
    """A regular grid on a box.

    Arguments:
        lower: lower corner, number or sequence of ``d`` numbers.
        upper: upper corner (``upper > lower`` in every dimension).
        shape: nodes per dimension, int or sequence of ``d`` ints (>= 2).
        periodic: torus (True) or free space (False).
        dim: dimension ``d`` when ``lower``, ``upper`` and ``shape`` are all scalars (default 1).
    """

    def __init__(self, lower, upper, shape, periodic: bool = False, dim: Optional[int] = None):
        lower = [float(v) for v in _as_list(lower)]
        upper = [float(v) for v in _as_list(upper)]
        dim = max(len(lower), len(upper), len(_as_list(shape)), 1 if dim is None else check_int("dim", dim, 1))
        lower, upper = _broadcast("lower", lower, dim), _broadcast("upper", upper, dim)
        shape = [check_int("shape", s, minimum=2) for s in _broadcast("shape", _as_list(shape), dim)]
        for axis, (a, b) in enumerate(zip(lower, upper)):
            if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
                raise ValueError(f"upper: expected upper > lower in every dimension, but got lower={lower}, upper={upper}")
        if not isinstance(periodic, bool):
            raise TypeError(f"periodic: expected a bool, but got {type(periodic).__name__}")
        # one float32 field of this grid must fit somewhere (a 300000^2 grid is refused at once)
        check_fits("shape", 4.0 * math.prod(shape), "any", f"a grid of shape {shape} (one float32 field)")
        self.lower: Tuple[float, ...] = tuple(lower)
        self.upper: Tuple[float, ...] = tuple(upper)
        self.shape: Tuple[int, ...] = tuple(shape)
        self.periodic = periodic

    # -- geometry --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def spacing(self) -> Tuple[float, ...]:
        divisor = (lambda g: g) if self.periodic else (lambda g: g - 1)
        return tuple((b - a) / divisor(g) for a, b, g in zip(self.lower, self.upper, self.shape))

    @property
    def cell_volume(self) -> float:
        return math.prod(self.spacing)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def axes(self, device=None, dtype=None) -> List[torch.Tensor]:
        """Node coordinates along each dimension: ``d`` tensors of shape ``(G_i,)``."""
        return [a + h * torch.arange(g, device=device, dtype=dtype or torch.get_default_dtype())
                for a, h, g in zip(self.lower, self.spacing, self.shape)]

    def nodes(self, device=None, dtype=None) -> torch.Tensor:
        """All node coordinates: ``(G_1, ..., G_d, d)``."""
        return torch.stack(torch.meshgrid(*self.axes(device, dtype), indexing="ij"), dim=-1)

    def __eq__(self, other) -> bool:
        return isinstance(other, Grid) and (self.lower, self.upper, self.shape, self.periodic) == (
            other.lower, other.upper, other.shape, other.periodic)

    def __hash__(self) -> int:
        return hash((self.lower, self.upper, self.shape, self.periodic))

    def __repr__(self) -> str:
        return f"Grid(lower={list(self.lower)}, upper={list(self.upper)}, shape={list(self.shape)}, periodic={self.periodic})"

    @classmethod
    def covering(cls, points: torch.Tensor, shape, padding: float = 0.1) -> "Grid":
        """A free-space grid whose box contains all ``points`` ``(..., N, d)``, widened by ``padding``
        times the extent on each side (at least ``1e-3`` absolute)."""
        points = check_points("points", points)
        flat = points.reshape(-1, points.shape[-1])
        low, high = flat.min(0).values.double(), flat.max(0).values.double()
        margin = torch.clamp((high - low) * padding, min=1e-3)
        return cls((low - margin).tolist(), (high + margin).tolist(), shape, periodic=False)

    # -- particle <-> grid --------------------------------------------------------------------------
    def locate(self, positions: torch.Tensor, check: bool = True):
        """Cell index ``(..., N, d)`` (long) and fractional offset in ``[0, 1]`` ``(..., N, d)``."""
        if check:
            positions = check_points("positions", positions, self.dim)
        lower = positions.new_tensor(self.lower)
        spacing = positions.new_tensor(self.spacing)
        scaled = (positions - lower) / spacing
        if self.periodic:
            base = torch.floor(scaled)
            fraction = scaled - base
            base = torch.remainder(base.long(), positions.new_tensor(self.shape, dtype=torch.long))
            return base, fraction
        if check:
            self._check_inside(positions)
        top = positions.new_tensor([g - 2 for g in self.shape])
        base = torch.minimum(torch.floor(scaled), top).clamp_min(0)
        return base.long(), scaled - base

    def _check_inside(self, positions: torch.Tensor) -> None:
        """Free space: raise ``ValueError`` naming ``positions`` when particles lie outside the box."""
        lower, upper = positions.new_tensor(self.lower), positions.new_tensor(self.upper)
        outside = (positions < lower) | (positions > upper)
        if bool(outside.any()):
            count = int(outside.any(-1).sum())
            raise ValueError(
                f"positions: {count} particles lie outside the grid box lower={list(self.lower)}, "
                f"upper={list(self.upper)}; widen the grid (nothing is clipped)"
            )

    def _corners(self, base: torch.Tensor, fraction: torch.Tensor, linear: bool):
        """Yield (flat node index, weight) of the 2^d cloud-in-cell corners (or the nearest node)."""
        shape = base.new_tensor(self.shape)
        strides = base.new_tensor([math.prod(self.shape[i + 1:]) for i in range(self.dim)])
        if not linear:
            nearest = base + (fraction >= 0.5).long()
            nearest = torch.remainder(nearest, shape) if self.periodic else torch.minimum(nearest, shape - 1)
            yield (nearest * strides).sum(-1), None
            return
        for corner in itertools.product((0, 1), repeat=self.dim):
            offset = base.new_tensor(corner)
            index = base + offset
            if self.periodic:
                index = torch.remainder(index, shape)
            weight = torch.where(offset.bool(), fraction, 1 - fraction).prod(-1)
            yield (index * strides).sum(-1), weight

    def deposit(self, positions: torch.Tensor, weights: Optional[torch.Tensor] = None,
                scheme: str = "cic", check: bool = True, method: str = "auto") -> torch.Tensor:
        """Deposit particle masses on the nodes.

        Arguments:
            positions: ``(..., N, d)``.
            weights: particle masses ``(..., N)``; default ``1/N`` each, so each batch entry sums to 1.
            scheme: ``"cic"`` (cloud-in-cell, linear) or ``"ngp"`` (nearest grid point, a histogram).
            check: validate inputs and bounds (one host synchronisation; off in hot loops).
            method: ``"atomic"`` (one ``index_add_`` of all corner contributions), ``"sorted"``
                (sort particles by cell, sum each cell's contributions, then add one value per
                occupied cell and corner: far fewer colliding atomic adds on GPUs, slower on
                CPUs), or ``"auto"`` (``"atomic"``; the sorted path is opt-in until it is
                measured faster on a GPU).

        Returns:
            masses ``(..., G_1, ..., G_d)``; divide by :attr:`cell_volume` for a density.
        """
        if scheme not in ("cic", "ngp"):
            raise ValueError(f"scheme: expected 'cic' or 'ngp', but got {scheme!r}")
        if method not in ("auto", "atomic", "sorted"):
            raise ValueError(f"method: expected 'auto', 'atomic' or 'sorted', but got {method!r}")
        if check:
            positions = check_points("positions", positions, self.dim)
        batch_shape, n = positions.shape[:-2], positions.shape[-2]
        flat_positions = positions.reshape(-1, n, self.dim)
        batch = flat_positions.shape[0]
        if weights is None:
            weights = positions.new_full((1, 1), 1.0 / n).expand(batch, n)  # no (batch, n) allocation
        else:
            if check:
                weights = check_tensor("weights", weights)
                if tuple(weights.shape) != tuple(positions.shape[:-1]):
                    raise ValueError(f"weights: expected shape {tuple(positions.shape[:-1])}, but got {tuple(weights.shape)}")
            weights = weights.reshape(batch, n).to(positions.dtype)
        if scheme == "ngp" and method != "sorted":
            if check and not self.periodic:
                self._check_inside(flat_positions)
            return _deposit_nearest(self, flat_positions, weights).reshape(*batch_shape, *self.shape)
        base, fraction = self.locate(flat_positions, check=check)
        batch_offset = (torch.arange(batch, device=positions.device) * self.size).unsqueeze(-1)
        out = positions.new_zeros(batch * self.size)
        if method == "sorted":
            return _deposit_sorted(self, base, fraction, weights, batch_offset, out, scheme).reshape(*batch_shape, *self.shape)
        indices, values = [], []
        for flat_index, corner_weight in self._corners(base, fraction, linear=scheme == "cic"):
            indices.append((flat_index + batch_offset).reshape(-1))
            values.append((weights if corner_weight is None else weights * corner_weight).reshape(-1))
        out.index_add_(0, torch.cat(indices), torch.cat(values))
        return out.reshape(*batch_shape, *self.shape)

    def interpolate(self, field: torch.Tensor, positions: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Cloud-in-cell interpolation of a node field to particle positions.

        Arguments:
            field: ``(..., G_1, ..., G_d)`` or ``(..., G_1, ..., G_d, c)``.
            positions: ``(..., N, d)`` with the same batch dimensions ``...``.

        Returns:
            ``(..., N)`` or ``(..., N, c)``, matching ``field``.
        """
        if check:
            positions = check_points("positions", positions, self.dim)
            field = check_tensor("field", field, min_ndim=self.dim)
        batch_shape, n = positions.shape[:-2], positions.shape[-2]
        scalar = tuple(field.shape[field.ndim - self.dim:]) == self.shape
        if scalar:
            field = field.unsqueeze(-1)
        if tuple(field.shape[-self.dim - 1:-1]) != self.shape:
            raise ValueError(f"field: expected grid dimensions {self.shape}, but got shape {tuple(field.shape)}")
        channels = field.shape[-1]
        flat_positions = positions.reshape(-1, n, self.dim)
        batch = flat_positions.shape[0]
        try:
            flat_field = field.expand(*batch_shape, *self.shape, channels).reshape(batch * self.size, channels)
        except RuntimeError:
            raise ValueError(
                f"field: batch dimensions {tuple(field.shape[:-self.dim - 1])} do not match positions' {tuple(batch_shape)}"
            ) from None
        base, fraction = self.locate(flat_positions, check=check)
        batch_offset = (torch.arange(batch, device=positions.device) * self.size).unsqueeze(-1)
        result = positions.new_zeros(batch, n, channels)
        for flat_index, corner_weight in self._corners(base, fraction, linear=True):
            result += corner_weight.unsqueeze(-1) * flat_field[flat_index + batch_offset]
        result = result.reshape(*batch_shape, n, channels)
        return result.squeeze(-1) if scalar else result

    # -- convolution offsets ------------------------------------------------------------------------
    def fft_shape(self) -> Tuple[int, ...]:
        """Size of the FFT arrays: ``G`` (periodic) or ``2G`` (free space, zero-padded)."""
        return self.shape if self.periodic else tuple(2 * g for g in self.shape)

    def squared_wavenumbers(self, device=None, dtype=None) -> torch.Tensor:
        """:math:`|k|^2` of the real FFT of an ``fft_shape`` array (``rfftn`` layout): ``(*fft_shape[:-1], n_d // 2 + 1)``."""
        dtype = dtype or torch.get_default_dtype()
        axes = []
        for axis, (h, n) in enumerate(zip(self.spacing, self.fft_shape())):
            last = axis == self.dim - 1
            frequencies = (torch.fft.rfftfreq if last else torch.fft.fftfreq)(n, d=h, device=device, dtype=dtype)
            axes.append((2 * math.pi * frequencies) ** 2)
        grids = torch.meshgrid(*axes, indexing="ij")
        return sum(grids[1:], grids[0])

    def offsets(self, device=None, dtype=None) -> torch.Tensor:
        """Node-to-node displacements in FFT order, ``(*fft_shape, d)``.

        Periodic: minimum-image displacements. Free space: displacements ``-(G-1)..(G-1)``; the
        unused index ``G`` gets displacement ``G h`` (never paired with real nodes).
        """
        axes = []
        for h, g, n in zip(self.spacing, self.shape, self.fft_shape()):
            index = torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype())
            index = torch.where(index <= n // 2, index, index - n)
            axes.append(index * h)
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


# -- deposit kernels (Grid.deposit picks one) ------------------------------------------------------
def _deposit_nearest(grid: "Grid", positions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Nearest-grid-point deposit of ``positions (B, n, d)`` with ``weights (B, n)`` -> ``(B * size,)``.

    Same node choice as :meth:`Grid.locate` + :meth:`Grid._corners` (``floor`` plus one where the fraction is
    at least 1/2, clamped or wrapped), computed axis by axis with scalar arithmetic (broadcasting
    against a length-``d`` vector is several times slower in torch) and, on CPUs, in chunks of
    ``DEPOSIT_CHUNK`` particles: one pass over tens of millions of particles was dominated by
    first-touch page faults of full-size temporaries, while chunk-sized ones stay cached.
    """
    batch, n, dim = positions.shape
    out = positions.new_zeros(batch * grid.size)
    index_dtype = torch.int32 if batch * grid.size < 2 ** 31 else torch.int64
    strides = [math.prod(grid.shape[i + 1:]) for i in range(dim)]
    chunk = DEPOSIT_CHUNK if positions.device.type == "cpu" else max(batch * n, 1)
    rows, columns = max(1, chunk // max(n, 1)), max(1, min(n, chunk))
    for first in range(0, batch, rows):
        offsets = torch.arange(first, min(first + rows, batch), device=positions.device, dtype=index_dtype)
        offsets = offsets.unsqueeze(-1) * grid.size
        for start in range(0, n, columns):
            block = positions[first:first + rows, start:start + columns]
            flat = offsets
            for axis, (low, step, size) in enumerate(zip(grid.lower, grid.spacing, grid.shape)):
                scaled = (block[..., axis] - low) / step
                nearest = torch.floor(scaled)
                nearest += (scaled - nearest) >= 0.5
                if grid.periodic:
                    index = torch.remainder(nearest.to(index_dtype), size)
                else:
                    index = nearest.clamp_(0, size - 1).to(index_dtype)
                flat = flat + index * strides[axis] if axis == 0 else flat.add_(index * strides[axis])
            out.index_add_(0, flat.reshape(-1), weights[first:first + rows, start:start + columns].reshape(-1))
    return out


def _deposit_sorted(grid: "Grid", base, fraction, weights, batch_offset, out, scheme):
    # Group particles by their cell so that each (cell, corner) pair receives one add.
    if scheme == "ngp":  # one node per particle: group by that node directly
        (node, _), = grid._corners(base, fraction, linear=False)
        node = (node + batch_offset).reshape(-1)
        order = torch.argsort(node)
        nodes, counts = torch.unique_consecutive(node[order], return_counts=True)
        return out.index_add_(0, nodes, torch.segment_reduce(weights.reshape(-1)[order], "sum", lengths=counts))
    shape = base.new_tensor(grid.shape)
    strides = base.new_tensor([math.prod(grid.shape[i + 1:]) for i in range(grid.dim)])
    cell = ((base * strides).sum(-1) + batch_offset).reshape(-1)
    order = torch.argsort(cell)
    sorted_cell = cell[order]
    cells, counts = torch.unique_consecutive(sorted_cell, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # index of each cell's first particle in sorted order
    flat_fraction = fraction.reshape(-1, grid.dim)[order]
    flat_weights = weights.reshape(-1)[order]
    cell_base = base.reshape(-1, grid.dim)[order][first]
    cell_batch = sorted_cell[first] // grid.size
    for flat_index, corner_weight in grid._corners(cell_base.new_zeros(flat_fraction.shape), flat_fraction,
                                                   linear=True):
        # flat_index above is the corner offset from the particle's own cell (base 0)
        contribution = flat_weights * corner_weight
        per_cell = torch.segment_reduce(contribution, "sum", lengths=counts)
        offset = flat_index[first]
        node = cell_base + torch.stack([(offset // s) % g for s, g in zip(strides.tolist(), grid.shape)], -1)
        node = torch.remainder(node, shape) if grid.periodic else node
        out.index_add_(0, (node * strides).sum(-1) + cell_batch * grid.size, per_cell)
    return out


class GridConvolution:
    r"""Discrete convolution :math:`u_i = \sum_k \kappa(x_i - x_k)\, m_k` on a :class:`Grid` by FFT.

    The kernel's spectrum is computed once, on first use for a given device/dtype, and cached.

    Arguments:
        grid: the grid.
        kernel: callable mapping displacements ``(..., d)`` to values ``(...)`` or ``(..., c)``.
    """

    def __init__(self, grid: Grid, kernel: Callable[[torch.Tensor], torch.Tensor]):
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
        if not callable(kernel):
            raise TypeError(f"kernel: expected a callable, but got {type(kernel).__name__}")
        self.grid = grid
        self.kernel = kernel
        self._spectra = {}

    def spectrum(self, device, dtype) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._spectra:
            # float64 offsets (d), kernel values and their spectrum (up to d + 1 channels each)
            nodes = math.prod(self.grid.fft_shape())
            check_fits("grid", 8.0 * nodes * (3 * self.grid.dim + 3), device,
                       f"the kernel spectrum of {self.grid!r} ({nodes} FFT nodes)")
            offsets = self.grid.offsets(device=device, dtype=torch.float64)
            values = self.kernel(offsets)
            if values.ndim == self.grid.dim:
                values = values.unsqueeze(-1)
            values = values.to(dtype).movedim(-1, 0)  # (c, *fft_shape)
            self._spectra[key] = torch.fft.rfftn(values, dim=tuple(range(-self.grid.dim, 0)))
        return self._spectra[key]

    def __call__(self, masses: torch.Tensor) -> torch.Tensor:
        """``masses (..., G_1..G_d) -> (..., G_1..G_d, c)``."""
        dims = tuple(range(-self.grid.dim, 0))
        spectrum = self.spectrum(masses.device, masses.dtype)
        transformed = torch.fft.rfftn(masses, s=self.grid.fft_shape(), dim=dims)
        product = transformed.unsqueeze(-self.grid.dim - 1) * spectrum  # (..., c, *freq)
        result = torch.fft.irfftn(product, s=self.grid.fft_shape(), dim=dims)
        slices = (Ellipsis,) + tuple(slice(0, g) for g in self.grid.shape)
        return result[slices].movedim(-self.grid.dim - 1, -1)


def _as_list(value) -> list:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _broadcast(name: str, values: Sequence, dim: int) -> list:
    if len(values) == 1:
        return list(values) * dim
    if len(values) != dim:
        raise ValueError(f"{name}: expected 1 or {dim} entries, but got {len(values)}")
    return list(values)
