r"""Double-well potential with Curie-Weiss coupling ``double_well`` (multimodal benchmark).

.. math:: dX_i = \big(-(X_i^3 - X_i) - a (X_i - \bar X)\big)\,dt + \sigma\, dW_i

(external potential :math:`V = x^4/4 - x^2/2`, interaction :math:`K = a x^2/2`). Starting from a
narrow Gaussian near the saddle the law splits between the wells :math:`\pm 1`; the coupling
``a`` controls how strongly the ensemble is pulled towards one mode (biased ``a`` in
{0.1, 0.5, 1.5} in the nudging benchmarks).
"""
from __future__ import annotations

import torch

from .._validation import check_int, check_nonnegative
from ..kernels import PowerPotential
from ..sde import McKeanVlasovSDE
from . import register
from .base import SDESystem


@register("double_well")
class DoubleWellCurieWeiss(SDESystem):
    """Arguments: ``a`` coupling, ``sigma`` noise, ``dim``, ``initial_mean``, ``initial_std``."""

    default_particles = 2000
    default_t_end = 4.0
    default_dt = 1e-2
    default_record_dt = 0.1

    def __init__(self, a: float = 1.0, sigma: float = 0.7, dim: int = 1, initial_mean: float = 0.2,
                 initial_std: float = 0.3):
        self.a = check_nonnegative("a", a)
        self.sigma = check_nonnegative("sigma", sigma)
        self.dim = check_int("dim", dim, minimum=1)
        self.initial_mean = float(initial_mean)
        self.initial_std = check_nonnegative("initial_std", initial_std)
        self.sde = McKeanVlasovSDE(self.dim, external_force=lambda x: x - x**3,
                                   interaction=PowerPotential(2, 0.5 * self.a), diffusion=self.sigma)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        noise = torch.randn((n_experiments, n_particles, self.dim), generator=generator, device=device, dtype=dtype)
        return self.initial_mean + self.initial_std * noise
