r"""Pairs of point clouds to validate transport maps on: one affine case with a known map, and
families chosen to break solvers tuned on it (curved, multimodal, heavy-tailed, hard edges, far
apart, very unequal spreads, 3-D).

Every family is a function ``(n, generator) -> (x, y)`` of two float64 CPU clouds ``(n, d)``;
:func:`transport_case` draws one by name with a seed, dtype and device. References: the exact
assignment (:func:`torchmf.transport.exact.assignment`) or a long converged solve.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

from .._validation import check_choice, check_int

__all__ = ["affine_gaussian_case", "transport_case", "TRANSPORT_CASES"]

_F64 = torch.float64


def affine_gaussian_case(n: int, seed: int = 0, device=None, dtype: torch.dtype = torch.float32):
    """A 2-D case whose exact discrete map is known: ``(x, y, exact)``, each ``(n, 2)``.

    ``x ~ N(0, I_2)`` and ``y`` is the shuffled image of ``x`` under :math:`T(x) = b + S x` with
    :math:`S` symmetric positive definite. :math:`T` is the gradient of a convex function, so it is
    the optimal map between the two empirical measures themselves and ``exact = T(x)`` row by row
    (independent samples of :math:`N(b, S^2)` would add a sampling discrepancy of several percent).
    Drawn in float64 on the CPU from ``seed``, then cast to ``dtype`` and moved to ``device``.
    """
    n = check_int("n", n, minimum=1)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    x = torch.randn(n, 2, generator=generator, dtype=_F64)
    exact = _AFFINE_SHIFT + x @ _AFFINE_STRETCH
    y = exact[torch.randperm(n, generator=generator)]
    return tuple(tensor.to(device=device, dtype=dtype) for tensor in (x, y, exact))


_AFFINE_STRETCH = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=_F64)
_AFFINE_SHIFT = torch.tensor([2.0, -1.0], dtype=_F64)


def _affine(n, generator):
    x = torch.randn(n, 2, generator=generator, dtype=_F64)
    y = _AFFINE_SHIFT + torch.randn(n, 2, generator=generator, dtype=_F64) @ _AFFINE_STRETCH
    return x, y


def _square_to_banana(n, generator):
    """Uniform square to a curved non-Gaussian cloud (a parabola with noise): non-affine."""
    x = 2 * torch.rand(n, 2, generator=generator, dtype=_F64) - 1
    t = torch.randn(n, generator=generator, dtype=_F64)
    noise = torch.randn(n, generator=generator, dtype=_F64)
    return x, torch.stack([1.5 * t, 0.6 * t ** 2 - 1 + 0.2 * noise], 1)


def _mixture_to_ring(n, generator):
    """Three Gaussian blobs to a thin ring: multimodal source, non-convex target."""
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=_F64)
    x = centres[torch.randint(0, 3, (n,), generator=generator)] + 0.4 * torch.randn(n, 2, generator=generator,
                                                                                    dtype=_F64)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=_F64)
    radius = 3 + 0.2 * torch.randn(n, generator=generator, dtype=_F64)
    return x, torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def _heavy_to_disk(n, generator):
    """Student-t (3 degrees of freedom, heavy tails) to the uniform disk (a hard edge)."""
    normal = torch.randn(n, 2, generator=generator, dtype=_F64)
    chi2 = torch.randn(n, 3, generator=generator, dtype=_F64).pow(2).sum(1, keepdim=True)
    x = normal / (chi2 / 3).sqrt()
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=_F64)
    radius = 2 * torch.rand(n, generator=generator, dtype=_F64).sqrt()
    return x, torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def _l_shape_to_triangle(n, generator):
    """Uniform on an L-shaped domain to uniform on a triangle: hard, non-convex edges."""
    points = []
    while sum(p.shape[0] for p in points) < n:
        candidate = 2 * torch.rand(2 * n, 2, generator=generator, dtype=_F64)
        points.append(candidate[(candidate[:, 0] < 1) | (candidate[:, 1] < 1)])
    x = torch.cat(points)[:n]
    u = torch.rand(n, 2, generator=generator, dtype=_F64)
    flip = u.sum(1) > 1
    u[flip] = 1 - u[flip]
    corners = torch.tensor([[0.5, 0.2], [2.5, 0.6], [1.2, 2.4]], dtype=_F64)
    y = corners[0] + u[:, :1] * (corners[1] - corners[0]) + u[:, 1:] * (corners[2] - corners[0])
    return x, y


def _far_apart(n, generator):
    """A uniform square and a rotated elongated Gaussian 20 spreads away."""
    x = torch.rand(n, 2, generator=generator, dtype=_F64) - 0.5
    rotation = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=_F64)
    y = (torch.randn(n, 2, generator=generator, dtype=_F64) * torch.tensor([0.5, 0.1], dtype=_F64)) @ rotation
    return x, y + torch.tensor([6.0, 3.0], dtype=_F64)


def _unequal_spreads(n, generator):
    """A tight Gaussian (sd 0.05) to a wide uniform annulus (radii 1 to 2): spreads 40x apart."""
    x = 0.05 * torch.randn(n, 2, generator=generator, dtype=_F64)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=_F64)
    radius = (1 + 3 * torch.rand(n, generator=generator, dtype=_F64)).sqrt()
    return x, torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def _cube_to_shell_3d(n, generator):
    """3-D: uniform cube to a noisy spherical shell squashed along z."""
    x = 2 * torch.rand(n, 3, generator=generator, dtype=_F64) - 1
    direction = torch.randn(n, 3, generator=generator, dtype=_F64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    radius = 1.5 + 0.1 * torch.randn(n, 1, generator=generator, dtype=_F64)
    return x, direction * radius * torch.tensor([1.0, 1.0, 0.5], dtype=_F64)


TRANSPORT_CASES: Dict[str, Callable[[int, torch.Generator], Tuple[torch.Tensor, torch.Tensor]]] = {
    "affine_gaussian": _affine,
    "square_to_banana": _square_to_banana,
    "mixture_to_ring": _mixture_to_ring,
    "heavy_to_disk": _heavy_to_disk,
    "l_shape_to_triangle": _l_shape_to_triangle,
    "far_apart": _far_apart,
    "unequal_spreads": _unequal_spreads,
    "cube_to_shell_3d": _cube_to_shell_3d,
}


def transport_case(name: str, n: int, seed: int = 0, device=None, dtype: torch.dtype = torch.float64):
    """Two clouds ``(x, y)`` of family ``name`` (a key of :data:`TRANSPORT_CASES`), ``(n, d)`` each,
    drawn in float64 on the CPU from ``seed`` and then cast to ``dtype`` on ``device``."""
    check_choice("name", name, tuple(TRANSPORT_CASES))
    n = check_int("n", n, minimum=2)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    x, y = TRANSPORT_CASES[name](n, generator)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
