r"""Local 2-D model with variable diffusivity ``local_2d`` (WSINDy paper, sec. 5.1, eq. 5.2).

.. math:: \partial_t\mu = -\partial_x\mu - \partial_y\mu + \Delta\big[(1 + 0.95\cos(\omega x)\cos(\omega y))\,\mu\big]

is the Fokker-Planck equation of :math:`dX = (1, 1)\,dt + \sqrt{2 D(X)}\, dW`,
:math:`D = 1 + 0.95 \cos(\omega x)\cos(\omega y)`. Initial law :math:`N(0, I_2)`; data every
0.02 for 100 steps from a micro step of 1e-4 (the paper's settings). For large ``omega`` the
homogenized equation has constant diffusivity equal to the harmonic mean of ``D``
(:meth:`homogenized_diffusivity`).
"""
from __future__ import annotations

import math

import torch

from .._validation import check_positive
from ..sde import McKeanVlasovSDE
from . import register
from .base import SDESystem


@register("local_2d")
class LocalVariableDiffusivity(SDESystem):
    """Arguments: ``omega`` (frequency), ``amplitude`` (0.95), ``velocity`` (constant advection, (1, 1))."""

    dim = 2
    default_particles = 16_384
    default_t_end = 2.0
    default_dt = 1e-4
    default_record_dt = 0.02

    def __init__(self, omega: float = 1.0, amplitude: float = 0.95, velocity=(1.0, 1.0)):
        self.omega = check_positive("omega", omega)
        self.amplitude = float(amplitude)
        if not 0 <= self.amplitude < 1:
            raise ValueError(f"amplitude: expected a number in [0, 1), but got {amplitude}")
        self.velocity = [float(v) for v in velocity]
        self.sde = McKeanVlasovSDE(2, external_force=self._advection, diffusion=self.sigma)

    def _advection(self, x):
        return x.new_tensor(self.velocity).expand_as(x)

    def diffusivity(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`D(x)`, ``(..., 2) -> (...)``."""
        return 1 + self.amplitude * torch.cos(self.omega * x[..., 0]) * torch.cos(self.omega * x[..., 1])

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion :math:`\\sqrt{2D(x)}` in both coordinates, ``(..., 2) -> (..., 2)``."""
        return torch.sqrt(2 * self.diffusivity(x)).unsqueeze(-1).expand_as(x)

    def homogenized_diffusivity(self, periods: int = 1, resolution: int = 2048) -> float:
        """Harmonic mean of :math:`D` over a period cell (midpoint rule)."""
        grid = (torch.arange(resolution, dtype=torch.float64) + 0.5) * (2 * math.pi / resolution)
        u, v = torch.meshgrid(grid, grid, indexing="ij")
        inverse = 1.0 / (1 + self.amplitude * torch.cos(u) * torch.cos(v))
        return float(1.0 / inverse.mean())

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        return torch.randn((n_experiments, n_particles, 2), generator=generator, device=device, dtype=dtype)
