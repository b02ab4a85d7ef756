r"""Radial kernels of the nonparametric interaction: hats in :math:`K(r)` and hats in :math:`K'(r)`.

A sum of :class:`HatPotential` on equally spaced knots is any piecewise-linear :math:`K(r)` (library type
``piecewise_linear``), a sum of :class:`GradientHatPotential` any :math:`K` with a piecewise-linear
:math:`K'(r)` (``piecewise_linear_gradient``); :mod:`.library` builds the terms.
"""
from __future__ import annotations

import torch

from .._validation import check_positive
from ..kernels import RadialKernel

__all__ = ["HatPotential", "GradientHatPotential"]


class HatPotential(RadialKernel):
    r"""A hat in the radius, :math:`k(r) = \max(0, 1 - |r - c|/h)`: a sum of hats on knots ``c = 0, h, 2h, ...``
    is any piecewise-linear :math:`K(r)` (the nonparametric interaction; :math:`\nabla K` piecewise constant)."""

    def __init__(self, center: float, width: float):
        self.center = float(center)
        if self.center < 0:
            raise ValueError(f"center: expected a radius >= 0, but got {center!r}")
        self.width = check_positive("width", width)

    def profile(self, r):
        return torch.clamp(1 - (r - self.center).abs() / self.width, min=0)

    def profile_derivative(self, r):
        inside = (r - self.center).abs() < self.width
        return torch.where(inside, -torch.sign(r - self.center) / self.width, torch.zeros_like(r))


class GradientHatPotential(HatPotential):
    r"""A hat in the radial derivative, :math:`k'(r) = \max(0, 1 - |r - c|/h)`, :math:`k(r) = -\int_r^\infty k'`:
    a sum of them on knots ``c = 0, h, 2h, ...`` is a :math:`K` with a piecewise-linear :math:`K'(r)` (the
    smoother nonparametric interaction: the hats' :math:`\nabla K` is piecewise constant, this one's is
    continuous between knots; at ``c = 0`` only the falling half, so :math:`K'(0^+)` is free, as for Morse)."""

    def profile_derivative(self, r):
        return torch.clamp(1 - (r - self.center).abs() / self.width, min=0)

    def profile(self, r):
        return self._integral(r) - self._integral(torch.full_like(r, self.center + self.width))

    def _integral(self, r):
        r""":math:`\int_{\max(c-h, 0)}^{r} k'` (clipped to the support)."""
        c, h = self.center, self.width
        low = max(c - h, 0.0)
        left, right = torch.clamp(r, low, c), torch.clamp(r, c, c + h)
        rising = (left - low) - ((c - low) ** 2 - (c - left) ** 2) / (2 * h)
        return rising + (right - c) - (right - c) ** 2 / (2 * h)
