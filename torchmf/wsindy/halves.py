r"""Split-half check of the verdict: identify again on each half of the particles and compare supports.

Resampling the rows of :math:`Gw = b` (:mod:`.verdict`) keeps the histogram fixed, and the rows
of neighbouring test functions share most of their data, so a support that is wrong but
consistently preferred by this histogram survives every row resample. The sampling variability
that matters is that of the particles: the two halves (every other experiment when ``M >= 2``,
else every other particle) give two independent histograms on the same grid, the same test
functions and rows; a term that the halves do not both select the same way as the full data is
not determined by the data.

Cost: the weak system is linear in the histogram except for the interaction columns (quadratic), and
the full histogram is the particle-weighted mean of the halves', :math:`U = (n_A U_A + n_B U_B)/n`. So
only the first half's system is assembled; the second half's local, diffusion and ``b`` entries are
:math:`(n\,G - n_A G_A)/n_B` from the full data's, and only its interaction columns are convolved
(exact up to round-off; masked data with per-frame weights assemble both halves). In 2-D without
interaction terms this halves the cost of the second half. The verdict flags only when neither half
finds the full data's support, so the second half is examined only when the first does not find it.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import torch

from ..grid import Grid
from .histogram import histogram
from .library import Library
from .system import build_system, interaction_columns
from .test_functions import TestFunctions

__all__ = ["half_supports", "half_systems", "split_halves"]


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


def half_systems(positions: torch.Tensor, weights: Optional[torch.Tensor], grid: Grid, library: Library,
                 tests: TestFunctions, crop: bool, dtype: torch.dtype, convolution: str, fft_dtype,
                 full: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """The weak systems ``(G (n, J), b (n,))`` of the two halves in turn (all rows, before trimming); a
    generator: the second is assembled only when asked for.

    ``full``: the full data's ``(G, b)`` on the same rows; with it (and no ``weights``) the second half's
    linear entries come from it and the first half's (module docstring), else both are assembled."""
    halves = split_halves(positions, weights)
    first_system = None
    for index, (part, mass) in enumerate(halves):
        density = histogram(part, grid, check=False, weights=mass, crop=crop).to(dtype)
        if index == 0 or full is None or weights is not None:
            first_system = build_system(density, grid, library, tests, convolution=convolution, fft_dtype=fft_dtype)
            yield first_system
            continue
        # every particle weighs 1/N of its experiment: U = (n_A U_A + n_B U_B) / n (n: experiments or particles)
        axis = 0 if positions.shape[0] >= 2 else 2
        total, first, second = positions.shape[axis], halves[0][0].shape[axis], part.shape[axis]
        matrix = (total * full[0] - first * first_system[0]) / second
        rhs = (total * full[1] - first * first_system[1]) / second
        interaction = library.of_kind("interaction")
        if interaction:
            columns = interaction_columns(density, grid, [library.terms[i] for i in interaction], tests, convolution,
                                          fft_dtype=fft_dtype)
            matrix[:, interaction] = torch.stack(columns, dim=1).to(matrix.dtype)
        yield matrix, rhs


def half_supports(positions: torch.Tensor, weights: Optional[torch.Tensor], grid: Grid, library: Library,
                  tests: TestFunctions, keep: Optional[torch.Tensor], crop: bool, dtype: torch.dtype,
                  convolution: str, fft_dtype, select: Callable,
                  full: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                  reference: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Supports ``(J,) bool`` that ``select(matrix, rhs, time_index)`` finds on the halves, in turn.

    ``full``: the full data's untrimmed ``(G, b)`` (:func:`half_systems`); ``keep (n,)``: the rows kept;
    ``reference (J,)``: the full data's support -- the verdict flags only when *neither* half finds it, so
    the second half is not assembled when the first finds it (one half's cost on a resolved support)."""
    supports = []
    time_index = tests.time_index()
    if keep is not None:
        time_index = time_index[keep.cpu()]
    for matrix, rhs in half_systems(positions, weights, grid, library, tests, crop, dtype, convolution, fft_dtype,
                                    full):
        if keep is not None:
            matrix, rhs = matrix[keep], rhs[keep]
        supports.append(select(matrix, rhs, time_index).cpu())
        if reference is not None and torch.equal(supports[-1], reference.cpu()):
            break
    return supports
