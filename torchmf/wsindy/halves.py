r"""Split-half check of the verdict: identify again on each half of the particles and compare supports.

Resampling the rows of :math:`Gw = b` (:mod:`.verdict`) keeps the histogram fixed, and the rows
of neighbouring test functions share most of their data, so a support that is wrong but
consistently preferred by this histogram survives every row resample. The sampling variability
that matters is that of the particles: the two halves (every other experiment when ``M >= 2``,
else every other particle) give two independent histograms on the same grid, the same test
functions and rows; a term that the halves do not both select the same way as the full data is
not determined by the data. Cost: two more histograms, weak systems and selections.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from ..grid import Grid
from .histogram import histogram
from .library import Library
from .system import build_system
from .test_functions import TestFunctions

__all__ = ["half_supports", "split_halves"]


def split_halves(positions: torch.Tensor, weights: Optional[torch.Tensor]):
    """The two halves ``[(positions (M', L, N', d), weights or None), ...]`` of ``positions (M, L, N, d)``:
    every other experiment when ``M >= 2``, else every other particle (weights renormalised per frame)."""
    halves = []
    for start in (0, 1):
        if positions.shape[0] >= 2:
            part = positions[start::2]
            mass = None if weights is None else weights[start::2]
        else:
            part = positions[:, :, start::2]
            mass = None
            if weights is not None:
                mass = weights[:, :, start::2]
                mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-300)
        halves.append((part, mass))
    return halves


def half_supports(positions: torch.Tensor, weights: Optional[torch.Tensor], grid: Grid, library: Library,
                  tests: TestFunctions, keep: Optional[torch.Tensor], crop: bool, dtype: torch.dtype,
                  convolution: str, fft_dtype, select: Callable) -> List[torch.Tensor]:
    """Supports ``[(J,) bool, (J,) bool]`` that ``select(matrix, rhs, time_index)`` finds on each half."""
    supports = []
    time_index = tests.time_index()
    if keep is not None:
        time_index = time_index[keep.cpu()]
    for part, mass in split_halves(positions, weights):
        density = histogram(part, grid, check=False, weights=mass, crop=crop).to(dtype)
        matrix, rhs = build_system(density, grid, library, tests, convolution=convolution, fft_dtype=fft_dtype)
        if keep is not None:
            matrix, rhs = matrix[keep], rhs[keep]
        supports.append(select(matrix, rhs, time_index).cpu())
    return supports
