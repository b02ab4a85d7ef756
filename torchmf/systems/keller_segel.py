r"""2-D parabolic-elliptic Keller-Segel particles ``keller_segel_2d`` (WSINDy paper, sec. 5.3).

.. math:: dX_i = -(\nabla K_\delta * \mu^N)(X_i)\,dt + \sigma\, dW_i, \qquad K_\delta = \text{eq. (5.6)}, \ \delta = 0.01,

logarithmic attraction with a linear cutoff below :math:`\delta`; ``sigma`` is 0 or the critical
value :math:`1/\sqrt{4\pi}`. Initial law uniform on the disk of radius 2; data every 0.1 from a
micro step of 0.0025 (81 time points to t = 8), as in the paper. The force uses the exact
pairwise backend by default (chunked, O(N) memory); ``backend="grid"`` trades accuracy near
the singularity for speed. ``backend="dense"`` is exact too and several times faster on CPU:
:func:`keller_segel_force` forms the squared distances with one matrix product per block of
queries (BLAS) and applies the closed-form gradient of eq. (5.6); it is what the WSINDy
reproduction uses. It is still O(N^2) per step.
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


def keller_segel_force(x: torch.Tensor, cutoff: float = 0.01, block: int = 1024) -> torch.Tensor:
    r"""Exact :math:`(\nabla K_\delta * \mu^N)(x_i) = \frac{1}{N}\sum_j \nabla K_\delta(x_i - x_j)` for
    ensembles ``x (..., N, 2)`` (any batch), with :math:`\nabla K_\delta(z) = \frac{z}{2\pi\max(|z|^2, \delta|z|)}`
    and :math:`\nabla K_\delta(0) = 0`. Memory ``O(block x N)`` per batch entry."""
    n = x.shape[-2]
    centre = x.mean(-2, keepdim=True)  # shifting keeps |x|^2 + |y|^2 - 2 x.y well conditioned
    y = x - centre
    squared_norms = (y * y).sum(-1)
    pieces = []
    for start in range(0, n, block):
        queries = y[..., start:start + block, :]
        squared = squared_norms[..., start:start + block].unsqueeze(-1) + squared_norms.unsqueeze(-2) \
            - 2 * queries @ y.transpose(-1, -2)
        squared = squared.clamp_min(0)
        distance = squared.sqrt()
        denominator = torch.maximum(squared, cutoff * distance)
        scale = torch.where(distance > 0, 1.0 / torch.where(denominator > 0, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(distance))
        pieces.append(queries * scale.sum(-1, keepdim=True) - scale @ y)
    return torch.cat(pieces, dim=-2) / (2 * math.pi * n)


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
        if backend == "dense":
            self.sde = McKeanVlasovSDE(2, external_force=self._dense_force, diffusion=self.sigma)
        else:
            self.sde = McKeanVlasovSDE(2, interaction=InteractionForce(self.potential, backend=backend,
                                                                       grid_shape=grid_shape), diffusion=self.sigma)

    def _dense_force(self, x):
        # the mean-field coupling enters as the "external" slot because it is computed from the whole ensemble
        return -keller_segel_force(x, self.cutoff)

    def grad_K(self, x: torch.Tensor) -> torch.Tensor:
        """True interaction force kernel :math:`\nabla K_\delta(x)`, ``(..., 2) -> (..., 2)``."""
        return self.potential.gradient(x)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        shape = (n_experiments, n_particles)
        radius = self.radius * torch.sqrt(torch.rand(shape, generator=generator, device=device, dtype=dtype))
        angle = 2 * math.pi * torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
