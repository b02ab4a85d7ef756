"""A fast-slow system of your own, for ``torchmf-train`` (docs/own_data.md, "Your own fast-slow system").

The slow variable relaxes towards 0 and is pushed by a fast variable that relaxes towards sin(x):

    dX = (-a X + b Y) dt + sigma dW,      dY = (sin X - Y) / eps dt + tau / sqrt(eps) dB.

With X frozen, Y is an Ornstein-Uhlenbeck process with invariant law N(sin x, tau^2 / 2), so the
averaged drift is F(x) = -a x + b sin x. Put this file on PYTHONPATH (or in your package) and name
the class in a config: ``system: {class_path: my_fast_slow.SinFastSlow, init_args: {a: 1.0, b: 2.0}}``.
"""
from __future__ import annotations

import math

import torch

from torchmf.averaging import FastSlowSystem


class SinFastSlow(FastSlowSystem):
    # -- required: the model structure the averaging learns with --------------------------------
    dim = 1  # d: slow coordinates
    fast_dim = 1  # k: fast coordinates
    parameter_names = ["a", "b"]  # theta, in this order (learned; their true values are attributes)

    # simulation defaults (used by simulate(), when you make a path with this class)
    default_t_end = 100.0
    default_dt = 2.5e-3
    default_record_dt = 1e-2

    def __init__(self, a: float = 1.0, b: float = 2.0, sigma: float = 0.5, tau: float = 1.0, eps: float = 0.01,
                 initial_x: float = 0.0):
        # every argument becomes an attribute of the same name: configs and checkpoints store them
        self.a, self.b = float(a), float(b)
        # slow noise, fast noise, time-scale ratio
        self.sigma, self.tau, self.eps = float(sigma), float(tau), float(eps)
        self.initial_x = float(initial_x)

    def slow_drift(self, x, y, theta):
        """f_theta(x, y): x (..., 1), y (..., 1), theta (..., 2) broadcastable -> (..., 1)."""
        return -theta[..., 0:1] * x + theta[..., 1:2] * y

    def fast_drift(self, x, y):
        """g(x, y): x (..., 1), y (..., 1) -> (..., 1); the fast noise is self.tau."""
        return torch.sin(x) - y

    def sample_invariant(self, x, n_samples, generator=None):
        """Draws of the fast law with x frozen: x (B, 1) -> (B, n_samples, 1) (starts a simulation)."""
        noise = torch.randn(tuple(x.shape[:-1]) + (n_samples, 1), generator=generator, device=x.device, dtype=x.dtype)
        return torch.sin(x).unsqueeze(-2) + self.tau / math.sqrt(2.0) * noise

    # -- optional: what unlocks more ---------------------------------------------------------------
    def averaged_drift(self, x):
        """The true F(x) (x (..., 1) -> (..., 1)): logged as drift_rel_error while training, if known."""
        return -self.a * x + self.b * torch.sin(x)

    def drift_features(self, x, y):
        """f_theta = Phi(x, y) theta (linear in theta): Phi (..., 1, 2); speeds up the posterior's bands."""
        x, y = torch.broadcast_tensors(x, y)
        return torch.stack((-x, y), dim=-1)

    def fast_log_density(self, x, y):
        """Unnormalized log rho_x(y) (..., 1), (..., 1) -> (...): used by fit_fast_law and the fluctuation variance."""
        return -((y - torch.sin(x)) ** 2).sum(-1) / self.tau ** 2
