"""A camera's view of cells, for tests and benchmarks of the image pipeline: what a microscope writes.

:func:`camera_frames` images point-like cells as a fluorescence camera does: every cell sends
``photons`` expected counts, spread over the pixels by a Gaussian point-spread function (exact pixel
integrals, rows = y as numpy stores images), on a constant floor of ``background`` counts (camera
offset, dark counts), with shot (Poisson) noise, saturated at the ``uint16`` range. Its exact
(noise-free) counterpart without the floor, :func:`expected_density`, is the oracle of the
background removal: the density a perfect removal would recover.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["camera_frames", "expected_density"]


def _pixel_shares(cells: np.ndarray, edges: np.ndarray, blur: float) -> np.ndarray:
    """Each cell's share of its light per pixel column and row: ``(N, G, 2)`` for ``cells (N, 2)``."""
    from scipy.special import erf

    cdf = 0.5 * (1 + erf((edges[None, :, None] - cells[:, None, :]) / (np.sqrt(2) * blur)))
    return np.diff(cdf, axis=1)


def expected_density(cells: np.ndarray, lower: Sequence[float], upper: Sequence[float], pixels: int,
                     blur: float) -> np.ndarray:
    """The blurred density of ``cells (N, 2)`` averaged over each pixel: ``(rows = y, columns = x)``,
    integrating to the share of the light inside the window."""
    edges_x = np.linspace(lower[0], upper[0], pixels + 1)
    edges_y = np.linspace(lower[1], upper[1], pixels + 1)
    share_x = _pixel_shares(np.asarray(cells, dtype=np.float64), edges_x, blur)[..., 0]
    share_y = _pixel_shares(np.asarray(cells, dtype=np.float64), edges_y, blur)[..., 1]
    area = (edges_x[1] - edges_x[0]) * (edges_y[1] - edges_y[0])
    return share_y.T @ share_x / (len(cells) * area)


def camera_frames(frames: Sequence[np.ndarray], lower: Sequence[float], upper: Sequence[float], pixels: int,
                  blur: float, background: float, photons: float, seed: int) -> np.ndarray:
    """``uint16`` counts ``(L, rows = y, columns = x)`` of the cells ``frames[l] (N, 2)`` (see the module)."""
    if not (blur > 0 and background >= 0 and photons > 0):
        raise ValueError(f"blur, background, photons: expected blur > 0, background >= 0, photons > 0, but got "
                         f"{blur}, {background}, {photons}")
    rng = np.random.default_rng(seed)
    images = []
    for cells in frames:
        density = expected_density(cells, lower, upper, pixels, blur)
        area = (upper[0] - lower[0]) * (upper[1] - lower[1]) / pixels ** 2
        expected = background + photons * len(cells) * area * density
        images.append(np.minimum(rng.poisson(expected), np.iinfo(np.uint16).max))
    return np.stack(images).astype(np.uint16)
