r"""The flow-averaging paper's benchmark: a tagged slow particle in a bath of ``N`` fast solvent particles.

Gibbs energy (``x``, ``y_i`` in :math:`\mathbb R^d`, spring constants ``k_i``, solvent confinement
:math:`\kappa`, tagged confinement :math:`V(x) = |x|^4/4`):

.. math:: H(x, y) = V(x) + \tfrac1N \textstyle\sum_i \big(\tfrac{k_i}2 |y_i - x|^2 + \tfrac\kappa2 |y_i|^2\big),

.. math:: dX = -\nabla_x H\,dt + \sqrt{2/\beta}\,dW, \qquad
          dY_i = -n\,\big(k_i (Y_i - X) + \kappa Y_i\big)\,dt + \sqrt{n}\sqrt{2N/\beta}\,dB_i ,

a reversible pair whose joint invariant law is :math:`\propto e^{-\beta H}` (Gibbs) for any scale
separation ``n`` (``eps = 1/n``). With ``x`` frozen the solvent is an OU process,
:math:`\rho_x = \bigotimes_i N\big(\tfrac{k_i}{k_i+\kappa} x, \tfrac{N}{\beta(k_i+\kappa)} I_d\big)`, and the
averaged drift is :math:`F(x) = -|x|^2 x - \big(\tfrac1N\sum_i \tfrac{k_i\kappa}{k_i+\kappa}\big) x`.

Model structure for the averaging method: :math:`f_\theta(x, y) = \theta_0\,\tfrac1N\sum_i k_i (y_i - x)
- \theta_1 |x|^2 x` (``coupling``, ``confinement``; truth ``(1, 1)``), fast drift
:math:`g_i = -(k_i (y_i - x) + \kappa y_i)` and fast noise :math:`\tau = \sqrt{2N/\beta}`; the fast
variable is ``y (N * d,)``, solvent ``i`` in entries ``i*d .. i*d + d - 1``. The fast step is the
exact OU transition, so ``n = 15000`` costs no more than ``n = 100``.

Constants not in the paper's abstract (the secondhand note names quadratic potentials and a Gibbs
law only): ``k_i`` evenly spaced in ``[0.5, 1.5]``, :math:`\kappa = 1`, :math:`\beta = 2`
(:math:`\sigma = 1`) and the quartic ``V`` are this implementation's choices.
"""
from __future__ import annotations

import math

import torch

from .._validation import check_int, check_positive
from . import register
from .fastslow import FastSlowSystem

__all__ = ["TaggedParticle"]


@register("tagged_particle")
class TaggedParticle(FastSlowSystem):
    """Arguments: ``d`` (space dimension), ``n_solvent`` (N), ``scale`` (n, the time-scale ratio 1/eps),
    ``beta`` (inverse temperature), ``kappa``, ``k_min``, ``k_max`` (spring constants), ``initial_x``."""

    parameter_names = ["coupling", "confinement"]
    default_t_end = 200.0
    default_dt = 5e-3
    default_record_dt = 1e-2

    def __init__(self, d: int = 1, n_solvent: int = 10, scale: float = 1000.0, beta: float = 2.0, kappa: float = 1.0,
                 k_min: float = 0.5, k_max: float = 1.5, initial_x: float = 0.0):
        self.dim = check_int("d", d, minimum=1)
        self.n_solvent = check_int("n_solvent", n_solvent, minimum=1)
        self.scale = check_positive("scale", scale)
        self.beta = check_positive("beta", beta)
        self.kappa = check_positive("kappa", kappa)
        self.k_min, self.k_max = check_positive("k_min", k_min), check_positive("k_max", k_max)
        if self.k_max < self.k_min:
            raise ValueError(f"k_max: expected >= k_min = {k_min}, but got {k_max}")
        self.fast_dim = self.n_solvent * self.dim
        self.eps = 1.0 / self.scale
        self.sigma = math.sqrt(2.0 / self.beta)
        self.tau = math.sqrt(2.0 * self.n_solvent / self.beta)
        self.coupling = 1.0
        self.confinement = 1.0
        self.initial_x = float(initial_x)

    # -- pieces ------------------------------------------------------------------------------------------
    def springs(self, like: torch.Tensor) -> torch.Tensor:
        """Spring constants ``k (N, 1)`` on ``like``'s device and dtype."""
        return torch.linspace(self.k_min, self.k_max, self.n_solvent, dtype=like.dtype,
                              device=like.device).unsqueeze(-1)

    def _solvent(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(tuple(y.shape[:-1]) + (self.n_solvent, self.dim))

    def _coupling(self, x, y):
        """:math:`\\frac1N\\sum_i k_i (y_i - x)`: ``(..., d)``."""
        return (self.springs(y) * (self._solvent(y) - x.unsqueeze(-2))).mean(-2)

    def _conditional_law(self, x):
        """Mean ``(..., N, d)`` and variance ``(N, 1)`` of each solvent particle under :math:`\\rho_x`."""
        springs = self.springs(x)
        mean = springs / (springs + self.kappa) * x.unsqueeze(-2)
        return mean, self.n_solvent / (self.beta * (springs + self.kappa))

    # -- FastSlowSystem ----------------------------------------------------------------------------------
    def slow_drift(self, x, y, theta):
        return theta[..., 0:1] * self._coupling(x, y) - theta[..., 1:2] * (x * x).sum(-1, keepdim=True) * x

    def drift_features(self, x, y):
        coupling = self._coupling(x, y)
        confinement = -(x * x).sum(-1, keepdim=True) * x
        coupling, confinement = torch.broadcast_tensors(coupling, confinement)
        return torch.stack((coupling, confinement), dim=-1)

    def fast_drift(self, x, y):
        solvent = self._solvent(y)
        drift = -(self.springs(y) * (solvent - x.unsqueeze(-2)) + self.kappa * solvent)
        return drift.reshape(y.shape)

    def fast_log_density(self, x, y):
        solvent = self._solvent(y)
        energy = 0.5 * (self.springs(y) * (solvent - x.unsqueeze(-2)) ** 2 + self.kappa * solvent**2).sum((-2, -1))
        return -2.0 * energy / self.tau**2

    def averaged_drift(self, x):
        springs = self.springs(x)[:, 0]
        friction = float((springs * self.kappa / (springs + self.kappa)).mean())
        return -(x * x).sum(-1, keepdim=True) * x - friction * x

    def sample_invariant(self, x, n_samples, generator=None):
        mean, variance = self._conditional_law(x)
        noise = torch.randn(tuple(x.shape[:-1]) + (n_samples, self.n_solvent, self.dim), generator=generator,
                            device=x.device, dtype=x.dtype)
        samples = mean.unsqueeze(-3) + variance.sqrt() * noise
        return samples.reshape(tuple(x.shape[:-1]) + (n_samples, self.fast_dim))

    def fast_step(self, x, y, h, noise):
        mean, variance = self._conditional_law(x)
        decay = torch.exp(-(self.springs(x) + self.kappa) * (h / self.eps))  # (N, 1)
        solvent = mean + (self._solvent(y) - mean) * decay + (variance * (1 - decay**2)).sqrt() * self._solvent(noise)
        return solvent.reshape(y.shape)
