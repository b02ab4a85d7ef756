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

from typing import Dict, Tuple

import torch

from ..grid import Grid, GridConvolution
from .library import Library
from .test_functions import TestFunctions

__all__ = ["build_system", "interaction_fields", "low_rank_factors"]

CONVOLUTIONS = ("fft", "svd")


def build_system(density: torch.Tensor, grid: Grid, library: Library, test_functions: TestFunctions,
                 convolution: str = "fft", svd_tolerance: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assemble ``G (n, J)`` and ``b (n,)`` in the dtype and on the device of ``density`` ``(L, *G)``."""
    if convolution not in CONVOLUTIONS:
        raise ValueError(f"convolution: expected one of {list(CONVOLUTIONS)}, but got {convolution!r}")
    dim = grid.dim
    columns: Dict[int, torch.Tensor] = {}
    interaction = library.of_kind("interaction")
    if interaction:
        terms = [library.terms[i] for i in interaction]
        for index, product in zip(interaction, interaction_fields(density, grid, terms, convolution, svd_tolerance)):
            column = 0
            for axis in range(dim):
                orders = [0] * dim
                orders[axis] = 1
                column = column + test_functions.integrate(product[..., axis], 0, orders)
            columns[index] = column
    columns.update(_local_columns(density, grid, library, test_functions))
    matrix = torch.stack([columns[i] for i in range(len(library))], dim=1)
    rhs = test_functions.integrate(density, 1, [0] * dim)
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


def interaction_fields(density: torch.Tensor, grid: Grid, terms, convolution: str = "fft",
                       svd_tolerance: float = 1e-10):
    r"""Yield :math:`U_t\,(\nabla K_j * U_t)` on C, ``(L, *G, d)``, for each interaction term.

    The convolution runs on the box that holds the data (``U`` is zero elsewhere, and so is the
    product), zero-padded to twice its size for a linear convolution on the C - C offsets.
    """
    ranges = _support_box(density, grid)
    spacing = grid.spacing
    box = Grid([grid.lower[i] + lo * spacing[i] for i, (lo, _) in enumerate(ranges)],
               [grid.lower[i] + (lo + size - 1) * spacing[i] for i, (lo, size) in enumerate(ranges)],
               [size for _, size in ranges])
    cropped = density.new_zeros((density.shape[0],) + tuple(size for _, size in ranges))
    source, target = [slice(None)], [slice(None)]
    for (lo, size), g in zip(ranges, grid.shape):
        stop = min(lo + size, g)
        source.append(slice(lo, stop))
        target.append(slice(0, stop - lo))
    cropped[tuple(target)] = density[tuple(source)]
    for fields in _box_fields(cropped, box, terms, convolution, svd_tolerance):
        product = cropped.unsqueeze(-1) * fields
        full = density.new_zeros(density.shape + (grid.dim,))
        full[tuple(source)] = product[tuple(target)]
        yield full


def _box_fields(density, grid, terms, convolution, svd_tolerance):
    dims = tuple(range(-grid.dim, 0))
    masses = density * grid.cell_volume
    fft_shape = grid.fft_shape()
    slices = (Ellipsis,) + tuple(slice(0, g) for g in grid.shape)
    if convolution == "fft" or grid.dim == 1:
        transformed = torch.fft.rfftn(masses, s=fft_shape, dim=dims)  # once for every kernel
        for term in terms:
            spectrum = GridConvolution(grid, term.gradient).spectrum(density.device, density.dtype)  # (d, *freq)
            channels = []
            for axis in range(grid.dim):
                product = transformed * spectrum[axis]
                channels.append(torch.fft.irfftn(product, s=fft_shape, dim=dims)[slices])
            yield torch.stack(channels, dim=-1)
        return
    if grid.dim != 2:
        raise ValueError(f"convolution: 'svd' is implemented for d = 2, but the grid is {grid.dim}-D")
    offsets = grid.offsets(device=density.device, dtype=torch.float64)
    first = torch.fft.fft(masses, n=fft_shape[0], dim=-2)  # transform along x1 once
    for term in terms:
        gradient = term.gradient(offsets).to(density.dtype)  # (2G1, 2G2, 2)
        channels = []
        for axis in range(2):
            left, right = low_rank_factors(gradient[..., axis], svd_tolerance)
            left_hat = torch.fft.fft(left, dim=0)  # (2G1, Q)
            right_hat = torch.fft.rfft(right, dim=0)  # (G2+1, Q)
            total = 0
            for q in range(left.shape[1]):
                along_first = torch.fft.ifft(first * left_hat[:, q].unsqueeze(-1), dim=-2).real[..., :grid.shape[0], :]
                spectrum = torch.fft.rfft(along_first, n=fft_shape[1], dim=-1) * right_hat[:, q]
                total = total + spectrum
            channels.append(torch.fft.irfft(total, n=fft_shape[1], dim=-1)[..., :grid.shape[1]])
        yield torch.stack(channels, dim=-1)


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
