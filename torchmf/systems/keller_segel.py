r"""2-D parabolic-elliptic Keller-Segel particles ``keller_segel_2d`` (WSINDy paper, sec. 5.3).

.. math:: dX_i = -(\nabla K_\delta * \mu^N)(X_i)\,dt + \sigma\, dW_i, \qquad K_\delta = \text{eq. (5.6)}, \ \delta = 0.01,

logarithmic attraction with a linear cutoff below :math:`\delta`; ``sigma`` is 0 or the critical
value :math:`1/\sqrt{4\pi}`. Initial law uniform on the disk of radius 2; data every 0.1 from a
micro step of 0.0025 (81 time points to t = 8), as in the paper. The force uses the exact
pairwise backend by default (chunked, O(N) memory); ``backend="grid"`` trades accuracy near
the singularity for speed.
"""
from __future__ import annotations

import math

import torch

from .._validation import check_nonnegative, check_positive
from ..interaction import InteractionForce
from ..kernels import LogPotential
from ..sde import McKeanVlasovSDE
from . import register
from .base import SDESystem


@register("keller_segel_2d")
class KellerSegel2D(SDESystem):
    """Arguments: ``sigma``, ``cutoff`` (:math:`\\delta`), ``radius`` of the initial disk, ``backend``."""

    dim = 2
    default_particles = 4000
    default_t_end = 8.0
    default_dt = 2.5e-3
    default_record_dt = 0.1
    critical_sigma = 1.0 / math.sqrt(4.0 * math.pi)

    def __init__(self, sigma: float = 0.0, cutoff: float = 0.01, radius: float = 2.0, backend: str = "pairwise",
                 grid_shape: int = 256):
        self.sigma = check_nonnegative("sigma", sigma)
        self.cutoff = check_positive("cutoff", cutoff)
        self.radius = check_positive("radius", radius)
        self.backend = backend
        self.potential = LogPotential(self.cutoff)
        self.sde = McKeanVlasovSDE(2, interaction=InteractionForce(self.potential, backend=backend, grid_shape=grid_shape),
                                   diffusion=self.sigma)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        shape = (n_experiments, n_particles)
        radius = self.radius * torch.sqrt(torch.rand(shape, generator=generator, device=device, dtype=dtype))
        angle = 2 * math.pi * torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
