r"""Mean-field Lorenz-63 ``lorenz_mf``.

.. math::
    dX_i = L(X_i)\,dt - a (X_i - \bar X)\,dt + \sigma\, dW_i, \qquad
    L(x, y, z) = \big(s(y - x),\ x(r - z) - y,\ xy - bz\big)

with the classical :math:`s = 10, r = 28, b = 8/3`; the coupling ``a`` keeps the cloud coherent
so that its mean follows a Lorenz-like chaotic orbit.
"""
from __future__ import annotations

import torch

from .._validation import check_nonnegative
from ..kernels import PowerPotential
from ..sde import McKeanVlasovSDE
from . import register
from .base import SDESystem


def lorenz_vector_field(x: torch.Tensor, s: float = 10.0, r: float = 28.0, b: float = 8.0 / 3.0) -> torch.Tensor:
    """Lorenz-63 vector field, ``(..., 3) -> (..., 3)``."""
    u, v, w = x.unbind(-1)
    return torch.stack((s * (v - u), u * (r - w) - v, u * v - b * w), dim=-1)


@register("lorenz_mf")
class MeanFieldLorenz(SDESystem):
    """Arguments: ``a`` coupling, ``sigma`` noise, ``s``, ``r``, ``b`` Lorenz constants,
    ``initial_mean`` (3 numbers), ``initial_std``."""

    dim = 3
    default_particles = 1000
    default_t_end = 10.0
    default_dt = 2e-3
    default_record_dt = 0.05

    def __init__(self, a: float = 1.0, sigma: float = 1.0, s: float = 10.0, r: float = 28.0, b: float = 8.0 / 3.0,
                 initial_mean=(1.0, 1.0, 20.0), initial_std: float = 1.0):
        self.a = check_nonnegative("a", a)
        self.sigma = check_nonnegative("sigma", sigma)
        self.s, self.r, self.b = float(s), float(r), float(b)
        self.initial_mean = [float(v) for v in initial_mean]
        if len(self.initial_mean) != 3:
            raise ValueError(f"initial_mean: expected 3 numbers, but got {len(self.initial_mean)}")
        self.initial_std = check_nonnegative("initial_std", initial_std)
        self.sde = McKeanVlasovSDE(3, external_force=lambda x: lorenz_vector_field(x, self.s, self.r, self.b),
                                   interaction=PowerPotential(2, 0.5 * self.a), diffusion=self.sigma)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        noise = torch.randn((n_experiments, n_particles, 3), generator=generator, device=device, dtype=dtype)
        return torch.tensor(self.initial_mean, device=device, dtype=dtype) + self.initial_std * noise
