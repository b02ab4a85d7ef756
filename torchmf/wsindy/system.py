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
    nodes = grid.nodes(device=density.device, dtype=density.dtype)  # (*G, d)
    contracted = {order: test_functions.integrate_time(density, order) for order in (0, 1)}  # (n_t, *G)
    unit = [0] * dim

    def orders(axis: int, order: int) -> List[int]:
        result = list(unit)
        result[axis] = order
        return result

    columns: Dict[int, torch.Tensor] = {}
    interaction = library.of_kind("interaction")
    if interaction:
        for index, fields in zip(interaction, interaction_fields(density, grid, [library.terms[i] for i in interaction],
                                                                 convolution, svd_tolerance)):
            column = 0
            for axis in range(dim):
                column = column + test_functions.integrate(density * fields[..., axis], 0, orders(axis, 1))
            columns[index] = column
    for index in library.of_kind("local"):
        term = library.terms[index]
        gradient = term.gradient(nodes)  # (*G, d)
        column = 0
        axes = range(dim) if term.axis is None else [term.axis]
        for axis in axes:
            column = column + test_functions.integrate_space(contracted[0] * gradient[..., axis], orders(axis, 1))
        columns[index] = column
    for index in library.of_kind("diffusion"):
        term = library.terms[index]
        values = term.basis.value(nodes)
        weighted = contracted[0] * values
        column = 0
        for axis in term.axes:
            column = column - test_functions.integrate_space(weighted, orders(axis, 2))
        columns[index] = column
    matrix = torch.stack([columns[i] for i in range(len(library))], dim=1)
    rhs = test_functions.integrate_space(contracted[1], unit)
    return matrix, rhs


def interaction_fields(density: torch.Tensor, grid: Grid, terms, convolution: str = "fft",
                       svd_tolerance: float = 1e-10):
    r"""Yield :math:`(\nabla K_j * U_t)(C)` ``(L, *G, d)`` for each interaction term, by FFT on the C - C grid."""
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
