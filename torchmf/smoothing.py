r"""Gaussian-smoothed densities on a grid: :math:`K_h * \mu^N` at the grid's nodes.

The observation operator of multiscale nudging and the density metric of
:func:`torchmf.metrics.density_l2_error` are the same smoothing: the cloud-in-cell deposit of the
particles (:meth:`torchmf.grid.Grid.deposit`) convolved with a Gaussian kernel of bandwidth ``h``
(:class:`torchmf.kernels.GaussianKernel`, periodized on a periodic grid) by FFT
(:class:`torchmf.grid.GridConvolution`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._validation import check_points, check_positive
from .grid import Grid, GridConvolution
from .kernels import GaussianKernel, PeriodicKernel

__all__ = ["smoothed_density"]


def smoothed_density(x: torch.Tensor, grid: Grid, bandwidth: float, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    r""":math:`(K_h * \mu^N)` at the nodes of ``grid``: ``(..., N, d) -> (..., G_1, ..., G_d)``.

    A Gaussian kernel of bandwidth ``h`` (periodized on a periodic grid) convolved with the
    cloud-in-cell deposit of the particles; integrates to 1 up to mass leaving the box.
    """
    x = check_points("x", x)
    if not isinstance(grid, Grid):
        raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
    if grid.dim != x.shape[-1]:
        raise ValueError(f"grid: expected dimension {x.shape[-1]} like x, but got a {grid.dim}-D grid")
    bandwidth = check_positive("bandwidth", bandwidth)
    kernel = GaussianKernel(bandwidth, grid.dim)
    if grid.periodic:
        kernel = PeriodicKernel(kernel, [b - a for a, b in zip(grid.lower, grid.upper)])
    masses = grid.deposit(x, weights)
    return GridConvolution(grid, kernel.value)(masses).squeeze(-1)
