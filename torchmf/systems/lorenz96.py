r"""Two-scale Lorenz-96 ``lorenz96_two_scale``: the realistic fast-slow case.

.. math::
    dX_k &= \big(-X_{k-1}(X_{k-2} - X_{k+1}) - X_k + F - h_x \bar Y_k\big)dt + \sigma\,dW_k,
    \qquad \bar Y_k = \tfrac1J \textstyle\sum_j Y_{j,k},\\
    dY_{j,k} &= \tfrac1\varepsilon\big(-Y_{j+1,k}(Y_{j+2,k} - Y_{j-1,k}) - Y_{j,k} + h_y X_k\big)dt
               + \tfrac{\tau}{\sqrt\varepsilon}\,dB_{j,k}

(``K`` slow and ``J x K`` fast variables on rings; the fast ring runs over all ``J K`` entries, as
in Lorenz's model). ``theta = (F, h_x)``. The averaged drift has no closed form:
:meth:`~Lorenz96TwoScale.averaged_drift` estimates it by a long simulation of the fast
process with ``x`` frozen (a few seconds for a handful of points).
"""
from __future__ import annotations

import math

import torch

from .._validation import check_int, check_positive
from . import register
from .fastslow import FastSlowSystem

__all__ = ["Lorenz96TwoScale"]


@register("lorenz96_two_scale")
class Lorenz96TwoScale(FastSlowSystem):
    """Arguments: ``K`` slow variables, ``J`` fast per slow, ``forcing`` (F), ``h_x``, ``h_y``,
    ``sigma``, ``tau``, ``eps``, ``initial_x``; ``averaging_time`` / ``burn_in`` of the
    frozen-x fast simulations used by :meth:`averaged_drift` and :meth:`sample_invariant`."""

    parameter_names = ["forcing", "h_x"]
    cheap_averaged_drift = False
    default_t_end = 20.0
    default_dt = 5e-4
    default_record_dt = 1e-2

    def __init__(self, K: int = 4, J: int = 4, forcing: float = 8.0, h_x: float = 1.0, h_y: float = 0.1,
                 sigma: float = 0.5, tau: float = 1.0, eps: float = 0.01, initial_x: float = 1.0,
                 averaging_time: float = 2.0, burn_in: float = 0.2):
        self.K = check_int("K", K, minimum=4)
        self.J = check_int("J", J, minimum=1)
        self.dim, self.fast_dim = self.K, self.K * self.J
        self.forcing, self.h_x, self.h_y = float(forcing), float(h_x), float(h_y)
        self.sigma = check_positive("sigma", sigma)
        self.tau = check_positive("tau", tau)
        self.eps = check_positive("eps", eps)
        self.initial_x = float(initial_x)
        self.averaging_time = check_positive("averaging_time", averaging_time)
        self.burn_in = check_positive("burn_in", burn_in)

    def _fast_mean(self, y):
        return y.unflatten(-1, (self.K, self.J)).mean(-1)  # fast index j runs fastest within slow block k

    def slow_drift(self, x, y, theta):
        advection = -torch.roll(x, 1, -1) * (torch.roll(x, 2, -1) - torch.roll(x, -1, -1))
        return advection - x + theta[..., 0:1] - theta[..., 1:2] * self._fast_mean(y)

    def fast_drift(self, x, y):
        advection = -torch.roll(y, -1, -1) * (torch.roll(y, -2, -1) - torch.roll(y, 1, -1))
        return advection - y + self.h_y * torch.repeat_interleave(x, self.J, dim=-1)

    def _frozen_fast_run(self, x, n_samples, generator):
        """Fast process with ``x (B, K)`` frozen: ``n_samples`` snapshots after burn-in, ``(B, n_samples, JK)``."""
        h = self.eps / 20
        y = torch.repeat_interleave(x, self.J, dim=-1) * self.h_y + 0.1 * torch.randn(
            x.shape[:-1] + (self.fast_dim,), generator=generator, device=x.device, dtype=x.dtype)
        for _ in range(math.ceil(self.burn_in / h)):
            y = self.fast_step(x, y, h, torch.randn(y.shape, generator=generator, device=x.device, dtype=x.dtype))
        stride = max(1, math.ceil(self.averaging_time / h / n_samples))
        snapshots = []
        for index in range(n_samples * stride):
            y = self.fast_step(x, y, h, torch.randn(y.shape, generator=generator, device=x.device, dtype=x.dtype))
            if index % stride == stride - 1:
                snapshots.append(y)
        return torch.stack(snapshots, dim=-2)

    def sample_invariant(self, x, n_samples, generator=None):
        return self._frozen_fast_run(x.reshape(-1, self.K), n_samples, generator).reshape(
            tuple(x.shape[:-1]) + (n_samples, self.fast_dim))

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        if n_particles != 1:
            raise ValueError(f"n_particles: a fast-slow system simulates one slow path per experiment, but got {n_particles}")
        x = self.initial_x + 0.5 * torch.randn((n_experiments, 1, self.K), generator=generator, device=device, dtype=dtype)
        y = 0.1 * torch.randn((n_experiments, 1, self.fast_dim), generator=generator, device=device, dtype=dtype)
        return x, y

    def averaged_drift(self, x, n_samples: int = 200, seed: int = 0):
        """Monte-Carlo :math:`F(x)` from frozen-x fast runs: ``x (..., K) -> (..., K)``."""
        generator = torch.Generator(device=x.device).manual_seed(seed)
        flat = x.reshape(-1, self.K)
        y = self._frozen_fast_run(flat, n_samples, generator)
        theta = self.true_theta.to(x)
        return self.slow_drift(flat.unsqueeze(-2), y, theta).mean(-2).reshape(x.shape)
