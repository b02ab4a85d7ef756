r"""The weak-form linear system :math:`G w = b` of Algorithm 4.1.

With :math:`U` the histogram ``(L, *G)`` and separable test functions :math:`\psi_k`
(:mod:`.test_functions`), the rows are test functions and the columns library terms:

- interaction :math:`K_j`: :math:`G_{kj} = \sum_i \langle \partial_i\psi_k, U\,(\partial_i K_j * U)\rangle`,
- local :math:`V_j` (potential): :math:`\sum_i\langle \partial_i\psi_k, U\,\partial_i V_j\rangle`;
  component form: :math:`\langle \partial_i\psi_k, U f_j\rangle`,
- diffusion :math:`D_j`: :math:`-\sum_{i \in \text{axes}} \langle \partial_{ii}\psi_k, U f_j\rangle`,
- :math:`b_k = \langle \partial_t\psi_k, U\rangle`,

so that the true coefficients satisfy :math:`G w \approx b` with :math:`K = \sum w_j K_j`,
:math:`\nabla V = \sum w_j \nabla V_j`, :math:`\tfrac12\sigma\sigma^T = \sum w_j D_j`
(integrate eq. (3.1) against :math:`\psi_k` and move every derivative onto it).

Convolutions :math:`\partial_i K_j * U_t` use the kernel sampled on the :math:`C - C` grid of
node offsets and FFTs (:class:`torchmf.grid.GridConvolution`'s spectrum; the forward FFT of
:math:`U` is computed once and reused for every kernel). In 2-D the option
``convolution="svd"`` splits each kernel array by a truncated SVD into rank-one (separable)
pieces and convolves with 1-D FFTs along each axis, as the paper proposes for non-separable
kernels; ``"fft"`` (default) uses the d-dimensional FFT, which in torch costs the same as a
single rank-one piece. Quadrature is the trapezoidal rule in space and time.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ..grid import Grid
from .library import Library
from .test_functions import TestFunctions

__all__ = ["build_system", "interaction_columns", "interaction_fields", "low_rank_factors"]

CONVOLUTIONS = ("fft", "svd")


def build_system(density: torch.Tensor, grid: Grid, library: Library, test_functions: TestFunctions,
                 convolution: str = "fft", svd_tolerance: float = 1e-10,
                 fft_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assemble ``G (n, J)`` and ``b (n,)`` in the dtype and on the device of ``density`` ``(L, *G)``.

    ``fft_dtype``: real dtype of the interaction convolutions (default: the dtype of ``density``);
    the products with ``U`` and all quadratures stay in the dtype of ``density``.
    """
    if convolution not in CONVOLUTIONS:
        raise ValueError(f"convolution: expected one of {list(CONVOLUTIONS)}, but got {convolution!r}")
    columns: Dict[int, torch.Tensor] = {}
    interaction = library.of_kind("interaction")
    if interaction:
        terms = [library.terms[i] for i in interaction]
        values = interaction_columns(density, grid, terms, test_functions, convolution, svd_tolerance, fft_dtype)
        columns.update(zip(interaction, values))
    columns.update(_local_columns(density, grid, library, test_functions))
    matrix = torch.stack([columns[i] for i in range(len(library))], dim=1)
    rhs = test_functions.integrate(density, 1, [0] * grid.dim)
    return matrix, rhs


def _local_columns(density, grid, library, test_functions) -> Dict[int, torch.Tensor]:
    """Columns of local and diffusion terms. Their basis functions are separable, so every piece
    :math:`\\langle \\partial^\\beta\\psi_k, U f\\rangle` is a contraction of the time-contracted
    histogram with 1-D matrices (test-function rows times the function's 1-D factors), batched over
    all pieces with the same derivative pattern ``beta``."""
    indices = library.of_kind("local") + library.of_kind("diffusion")
    if not indices:
        return {}
    axes = grid.axes(device=density.device, dtype=density.dtype)
    contracted = test_functions.integrate_time(density, 0)  # (n_t, *G)
    groups: Dict[tuple, list] = {}
    for index in indices:
        for sign, derivative, orders in library.terms[index].pieces():
            groups.setdefault(orders, []).append((index, sign, library.terms[index].basis.factors(axes, derivative)))
    columns: Dict[int, torch.Tensor] = {}
    for orders, pieces in groups.items():
        matrices = []
        for axis, (factor, order) in enumerate(zip(test_functions.spatial, orders)):
            base = factor.matrix(order, density.device, density.dtype)  # (n_i, G_i)
            matrices.append(torch.stack([piece[2][axis] for piece in pieces]).unsqueeze(1) * base)  # (P, n_i, G_i)
        values = _batched_contraction(contracted, matrices)  # (P, n)
        for (index, sign, _), value in zip(pieces, values):
            columns[index] = columns[index] + sign * value if index in columns else sign * value
    return columns


def _batched_contraction(field: torch.Tensor, matrices) -> torch.Tensor:
    """``field (T, G_1..G_d)``, ``matrices[i] (P, n_i, G_i)`` -> ``(P, T * n_1 * ... * n_d)``."""
    dim = len(matrices)
    letters = "abcdefgh"[:dim]
    grid_letters = "ijklmnop"[:dim]
    # last axis: one matrix product for all pieces at once (the largest contraction)
    last = matrices[-1]
    pieces, count, size = last.shape
    result = field.reshape(-1, size) @ last.reshape(pieces * count, size).T  # (T*G_1..G_{d-1}, P*n_d)
    result = result.reshape(*field.shape[:-1], pieces, count)  # (T, G_1..G_{d-1}, P, n_d)
    current = "t" + grid_letters[:-1] + "p" + letters[-1]
    for axis in range(dim - 2, -1, -1):
        target = current.replace(grid_letters[axis], letters[axis])
        result = torch.einsum(f"{current},p{letters[axis]}{grid_letters[axis]}->{target}", result, matrices[axis])
        current = target
    order = "p" + "t" + letters
    result = torch.einsum(f"{current}->{order}", result)
    return result.reshape(pieces, -1)


def _fast_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (fast FFT lengths)."""
    while True:
        m = n
        for prime in (2, 3, 5):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


def _support_box(density: torch.Tensor, grid: Grid):
    """Index ranges ``[lo, lo + size)`` per axis covering every nonzero of ``density`` (any time), with
    ``size`` FFT-friendly; the box may extend past the grid (zero padded)."""
    occupied = density.abs().sum(0) > 0
    ranges = []
    for axis in range(grid.dim):
        other = tuple(a for a in range(grid.dim) if a != axis)
        line = occupied.any(dim=other) if other else occupied
        nonzero = torch.nonzero(line).reshape(-1)
        if nonzero.numel() == 0:
            lo, hi = 0, 1
        else:
            lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
        size = _fast_size(max(hi - lo, 2))
        ranges.append((lo, size))
    return ranges


class _Box:
    """The sub-box of C that holds the data (``U`` is zero elsewhere, and so is ``U (grad K * U)``):
    its grid, the cropped density ``(L, *B)`` and the test-function matrices restricted to it."""

    def __init__(self, density: torch.Tensor, grid: Grid):
        self.ranges = _support_box(density, grid)
        spacing = grid.spacing
        self.grid = Grid([grid.lower[i] + lo * spacing[i] for i, (lo, _) in enumerate(self.ranges)],
                         [grid.lower[i] + (lo + size - 1) * spacing[i] for i, (lo, size) in enumerate(self.ranges)],
                         [size for _, size in self.ranges])
        self.density = density.new_zeros((density.shape[0],) + self.grid.shape)
        self.source, self.target = [slice(None)], [slice(None)]
        for (lo, size), g in zip(self.ranges, grid.shape):
            stop = min(lo + size, g)
            self.source.append(slice(lo, stop))
            self.target.append(slice(0, stop - lo))
        self.source, self.target = tuple(self.source), tuple(self.target)
        self.density[self.target] = density[self.source]
        self._matrices = {}

    def matrix(self, factor, axis: int, order: int, device, dtype) -> torch.Tensor:
        """Test-function matrix ``(n_i, B_i)`` of the spatial ``factor`` along ``axis`` on the box's nodes
        (zero past the grid), cached."""
        key = (axis, order, str(device), dtype)
        if key not in self._matrices:
            lo, size = self.ranges[axis]
            full = factor.matrix(order, device, dtype)
            out = full.new_zeros(full.shape[0], size)
            stop = min(lo + size, full.shape[1])
            out[:, :stop - lo] = full[:, lo:stop]
            self._matrices[key] = out
        return self._matrices[key]

    def contract_space(self, field: torch.Tensor, factors, orders) -> torch.Tensor:
        """``(T, *B) -> (T, n_1, ..., n_d)``: the spatial quadrature of :meth:`TestFunctions.contract_space` on the box."""
        result = field
        for axis in range(len(factors) - 1, -1, -1):
            matrix = self.matrix(factors[axis], axis, orders[axis], field.device, field.dtype)
            result = torch.movedim(torch.tensordot(result, matrix, dims=([1 + axis], [1])), -1, 1 + axis)
        return result


def _time_block(box_shape, dtype, device) -> int:
    """Time points per block of the interaction convolutions: on CPUs the block's spectra stay
    within a few MB (cache-resident temporaries instead of page-faulting 50 MB arrays); on GPUs all."""
    if torch.device(device).type != "cpu":
        return 1 << 30
    bytes_per_time = 2 * math.prod(2 * b for b in box_shape) * torch.finfo(dtype).bits // 8
    return max(1, (4 << 20) // max(bytes_per_time, 1))


def interaction_columns(density: torch.Tensor, grid: Grid, terms, test_functions: TestFunctions,
                        convolution: str = "fft", svd_tolerance: float = 1e-10,
                        fft_dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
    r"""Columns :math:`\sum_i\langle \partial_i\psi_k, U\,(\partial_i K_j * U)\rangle` ``(n,)`` of the interaction terms.

    The convolutions run on the box that holds the data, zero-padded to twice its size (linear
    convolution on the C - C offsets), block by block in time: per block one forward transform of
    ``U`` serves every term and axis, each inverse transform is cropped to the box as it goes (the
    padded half is never transformed back along the last axis), and the product with ``U`` is
    contracted with the spatial test functions at once; the time quadrature follows at the end.
    """
    dtype = density.dtype
    fft_dtype = dtype if fft_dtype is None else fft_dtype
    box = _Box(density, grid)
    convolver = _BoxConvolution(box.grid, terms, convolution, svd_tolerance, density.device, fft_dtype)
    factors = test_functions.spatial
    length = density.shape[0]
    block = _time_block(box.grid.shape, fft_dtype, density.device)
    partial = None  # (J, L, n_1, ..., n_d)
    for start in range(0, length, block):
        chunk = box.density[start:start + block]
        for index, fields in enumerate(convolver(chunk.to(fft_dtype) * box.grid.cell_volume)):
            total = 0
            for axis in range(grid.dim):
                orders = [0] * grid.dim
                orders[axis] = 1
                total = total + box.contract_space(chunk * fields[axis].to(dtype), factors, orders)
            if partial is None:
                partial = total.new_empty((len(terms), length) + tuple(total.shape[1:]))
            partial[index, start:start + block] = total
    time_matrix = test_functions.time.matrix(0, density.device, dtype)  # (n_t, L)
    columns = torch.tensordot(partial, time_matrix, dims=([1], [1]))  # (J, n_1..n_d, n_t)
    columns = torch.movedim(columns, -1, 1).reshape(len(terms), -1)
    return list(columns)


class _BoxConvolution:
    r""":math:`\partial_i K_j * m` on a (box) grid for blocks of masses ``(T, *B)``; calling yields, per
    term, the ``d`` components ``(T, *B)`` each.

    ``"fft"``: d-dimensional real FFT with the kernel spectra computed once (in float64, then cast).
    ``"svd"`` (2-D): each kernel array split into rank-one pieces by :func:`low_rank_factors`,
    convolved with 1-D FFTs along each axis.
    """

    def __init__(self, grid: Grid, terms, convolution: str, svd_tolerance: float, device, dtype):
        if convolution == "svd" and grid.dim != 2:
            if grid.dim != 1:
                raise ValueError(f"convolution: 'svd' is implemented for d = 2, but the grid is {grid.dim}-D")
            convolution = "fft"  # 1-D kernels are trivially rank one
        self.grid, self.convolution, self.dtype = grid, convolution, dtype
        self.fft_shape = grid.fft_shape()
        complex_dtype = (torch.ones(1, dtype=dtype) * 1j).dtype
        offsets = grid.offsets(device=device, dtype=torch.float64)
        if convolution == "fft":
            dims = tuple(range(-grid.dim, 0))
            self.spectra = [torch.fft.rfftn(term.gradient(offsets).movedim(-1, 0), dim=dims).to(complex_dtype)
                            for term in terms]  # (d, *freq) each
            return
        self.factors = []
        for term in terms:
            gradient = term.gradient(offsets)  # (2B1, 2B2, 2) float64
            pieces = []
            for axis in range(2):
                left, right = low_rank_factors(gradient[..., axis], svd_tolerance)
                pieces.append((torch.fft.fft(left, dim=0).to(complex_dtype).T.unsqueeze(-1),  # (Q, 2B1, 1)
                               torch.fft.rfft(right, dim=0).to(complex_dtype).T))  # (Q, B2+1)
            self.factors.append(pieces)

    def __call__(self, masses: torch.Tensor):
        shape, fft_shape, dim = self.grid.shape, self.fft_shape, self.grid.dim
        if self.convolution == "fft":
            transformed = torch.fft.rfft(masses, n=fft_shape[-1], dim=-1)  # shared by every term and axis
            for axis in range(dim - 1):
                transformed = torch.fft.fft(transformed, n=fft_shape[axis], dim=1 + axis)
            for spectrum in self.spectra:
                yield [self._inverse(transformed * spectrum[axis]) for axis in range(dim)]
            return
        first = torch.fft.fft(masses, n=fft_shape[0], dim=-2)  # along x1 once, (T, 2B1, B2)
        for pieces in self.factors:
            channels = []
            for left_hat, right_hat in pieces:
                # all rank-one pieces at once: (Q, T, 2B1, B2) -> crop x1 -> along x2 -> sum over Q
                along_first = torch.fft.ifft(first.unsqueeze(0) * left_hat.unsqueeze(1), dim=-2)
                along_first = along_first.real[..., :shape[0], :]
                spectrum = torch.fft.rfft(along_first, n=fft_shape[1], dim=-1) * right_hat[:, None, None, :]
                channels.append(torch.fft.irfft(spectrum.sum(0), n=fft_shape[1], dim=-1)[..., :shape[1]])
            yield channels

    def _inverse(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Inverse of the padded transform, cropped to the box after each axis."""
        shape, dim = self.grid.shape, self.grid.dim
        for axis in range(dim - 1):
            spectrum = torch.fft.ifft(spectrum, dim=1 + axis).narrow(1 + axis, 0, shape[axis])
        return torch.fft.irfft(spectrum, n=self.fft_shape[-1], dim=-1)[..., :shape[-1]]


def interaction_fields(density: torch.Tensor, grid: Grid, terms, convolution: str = "fft",
                       svd_tolerance: float = 1e-10):
    r"""Yield :math:`U_t\,(\nabla K_j * U_t)` on C, ``(L, *G, d)``, for each interaction term (the
    integrands of :func:`interaction_columns`; for checks and plots, the system does not store them)."""
    box = _Box(density, grid)
    convolver = _BoxConvolution(box.grid, terms, convolution, svd_tolerance, density.device, density.dtype)
    for fields in convolver(box.density * box.grid.cell_volume):
        product = box.density.unsqueeze(-1) * torch.stack(fields, dim=-1)
        full = density.new_zeros(density.shape + (grid.dim,))
        full[box.source] = product[box.target]
        yield full


def low_rank_factors(kernel: torch.Tensor, tolerance: float = 1e-10):
    """Truncated SVD of a 2-D kernel array ``(n1, n2)``: factors ``(n1, Q)``, ``(n2, Q)`` with
    ``kernel ~ left @ right.T`` and relative Frobenius residual below ``tolerance``."""
    u, s, vh = torch.linalg.svd(kernel.double(), full_matrices=False)
    energy = torch.cumsum(s.flip(0) ** 2, 0).flip(0)  # energy[q] = sum_{r >= q} s_r^2
    total = float(energy[0]) if energy.numel() else 0.0
    if total == 0.0:
        rank = 1
    else:
        residual = torch.cat((energy[1:], energy.new_zeros(1))) / total
        rank = int((residual > tolerance ** 2).sum()) + 1
        rank = min(rank, s.numel())
    left = (u[:, :rank] * s[:rank]).to(kernel.dtype)
    right = vh[:rank].T.contiguous().to(kernel.dtype)
    return left, right
