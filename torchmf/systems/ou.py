r"""Mean-field linear (Ornstein-Uhlenbeck) family ``ou_linear``.

.. math:: dX_i = -\big(\theta X_i + a (X_i - \bar X)\big)\,dt + \sigma\, dW_i, \qquad \bar X = \tfrac1N\sum_j X_j,

i.e. external potential :math:`V = \theta|x|^2/2` and interaction :math:`K = a|x|^2/2`. In the
mean-field limit the law stays Gaussian with mean :math:`m_0 e^{-\theta t}` and per-coordinate variance
:math:`v_\infty + (v_0 - v_\infty) e^{-2(\theta + a)t}`, :math:`v_\infty = \sigma^2 / (2(\theta + a))`.
The interaction strength ``a`` is the parameter the nudging benchmarks misspecify
(reference ``a = 1``, biased ``a in {0.5, 2, 5}``).
"""
from __future__ import annotations


import torch

from .._validation import check_int, check_nonnegative
from ..kernels import PowerPotential
from ..sde import McKeanVlasovSDE
from . import register
from .base import SDESystem


@register("ou_linear")
class LinearMeanField(SDESystem):
    """Arguments: ``a`` interaction strength, ``theta`` confinement, ``sigma`` noise, ``dim``,
    ``initial_mean``, ``initial_std`` (Gaussian initial law)."""

    default_particles = 2000
    default_t_end = 2.0
    default_dt = 1e-2
    default_record_dt = 0.05

    def __init__(self, a: float = 1.0, theta: float = 1.0, sigma: float = 1.0, dim: int = 1,
                 initial_mean: float = 2.0, initial_std: float = 0.5):
        self.a = check_nonnegative("a", a)
        self.theta = check_nonnegative("theta", theta)
        self.sigma = check_nonnegative("sigma", sigma)
        self.dim = check_int("dim", dim, minimum=1)
        self.initial_mean = float(initial_mean)
        self.initial_std = check_nonnegative("initial_std", initial_std)
        self.sde = McKeanVlasovSDE(self.dim, external_force=lambda x: -self.theta * x,
                                   interaction=PowerPotential(2, 0.5 * self.a), diffusion=self.sigma)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        noise = torch.randn((n_experiments, n_particles, self.dim), generator=generator, device=device, dtype=dtype)
        return self.initial_mean + self.initial_std * noise

    def mean(self, t) -> torch.Tensor:
        """Closed-form mean of each coordinate at times ``t``."""
        return self.initial_mean * torch.exp(-self.theta * torch.as_tensor(t, dtype=torch.float64))

    def variance(self, t) -> torch.Tensor:
        """Closed-form variance of each coordinate at times ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        rate = 2 * (self.theta + self.a)
        if rate == 0:
            return self.initial_std**2 + self.sigma**2 * t
        stationary = self.sigma**2 / rate
        return stationary + (self.initial_std**2 - stationary) * torch.exp(-rate * t)
