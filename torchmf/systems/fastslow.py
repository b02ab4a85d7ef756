r"""Fast-slow SDEs with a known averaged drift: ``fastslow_cubic`` and ``fastslow_tilted_well``.

.. math::
    dX = f_\theta(X, Y)\,dt + \sigma\, dW, \qquad
    dY = \tfrac1\varepsilon\, g(X, Y)\,dt + \tfrac1{\sqrt\varepsilon}\,\tau\, dB .

Stochastic averaging (:math:`\varepsilon \to 0`) gives :math:`dX = F(X)\,dt + \sigma\,dW` with
:math:`F(x) = E_{Y\sim\rho_x}[f_\theta(x, Y)]`, :math:`\rho_x` the invariant law of the fast process
with ``x`` frozen. One slow path is one "particle": a simulation has shape ``(M, L, 1, d)`` (``M``
independent paths) and records the fast variable in ``extras["fast"]`` ``(M, L, 1, k)``.

A :class:`FastSlowSystem` is also the *model structure* the averaging method learns with: it
exposes the parametric slow drift ``slow_drift(x, y, theta)``, the known fast drift
``fast_drift(x, y)`` and fast noise ``tau`` (used by the stationarity penalty), the true
parameters ``true_theta`` and the true averaged drift ``averaged_drift(x)`` for scoring.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from .._validation import check_positive
from . import register
from .base import ParticleSystem

__all__ = ["FastSlowSystem", "CubicFastSlow", "TiltedWellFastSlow"]


class FastSlowSystem(ParticleSystem):
    """Base class: one slow path ``X (d,)`` driven by a fast process ``Y (k,)``.

    Subclasses define ``dim`` (d), ``fast_dim`` (k), ``parameter_names`` (names of theta),
    :meth:`slow_drift`, :meth:`fast_drift`, :meth:`averaged_drift` and
    :meth:`sample_invariant`; they may override :meth:`fast_step` with an exact step.
    """

    fast_dim: int = 1
    parameter_names: List[str] = []
    default_particles = 1
    cheap_averaged_drift = True  # closed form or quadrature (scored at every validation)

    # -- model structure ----------------------------------------------------------------------
    def slow_drift(self, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """:math:`f_\\theta(x, y)`: ``x (..., d)``, ``y (..., k)``, ``theta (..., P)`` broadcastable -> ``(..., d)``."""
        raise NotImplementedError

    def drift_features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """For a slow drift linear in theta, :math:`f_\\theta(x, y) = \\Phi(x, y)\\,\\theta`: the features
        ``Phi`` ``(..., d, P)`` for ``x (..., d)``, ``y (..., k)``. Then :math:`F_\\theta = E_q[\\Phi]\\,\\theta`, and
        one precise :math:`E_q[\\Phi]` serves every posterior draw. ``NotImplementedError`` otherwise."""
        raise NotImplementedError(f"{type(self).__name__}: slow drift not declared linear in theta")

    def fast_drift(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`g(x, y)`: ``x (..., d)``, ``y (..., k)`` -> ``(..., k)``."""
        raise NotImplementedError

    def averaged_drift(self, x: torch.Tensor) -> torch.Tensor:
        """True :math:`F(x)`, ``x (..., d) -> (..., d)`` (closed form or quadrature)."""
        raise NotImplementedError

    def sample_invariant(self, x: torch.Tensor, n_samples: int, generator: Optional[torch.Generator] = None):
        """``n_samples`` draws of the true :math:`\\rho_x` for each ``x (B, d)``: ``(B, n_samples, k)``."""
        raise NotImplementedError

    def fast_log_density(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unnormalized :math:`\\log\\rho_x(y)` of the fast law, known from ``g`` and ``tau`` alone (a gradient
        fast drift ``g = -grad U`` gives :math:`-2U/\\tau^2`): ``x (..., d)``, ``y (..., k)`` -> ``(...)``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fast log-density")

    def fast_grid(self, x: torch.Tensor, n_points: int) -> torch.Tensor:
        """``(B, n_points)`` increasing fast states covering :math:`\\rho_x` for ``x (B, d)`` (one fast dimension)."""
        raise NotImplementedError(f"{type(self).__name__} has no quadrature grid for its fast law")

    def fluctuation_variance(self, x: torch.Tensor, theta: torch.Tensor, n_points: int = 801) -> torch.Tensor:
        r"""Extra variance per unit time that the fast fluctuations of :math:`f_\theta(x, Y) - F(x)` add to the
        slow increments at finite ``eps``: :math:`\varepsilon D_\theta(x)`, for ``x (B, d)`` and ``theta (T, P)``:
        ``(T, B, d)`` (float64).

        :math:`D = 2\int_0^\infty \mathrm{Cov}_x(h(Y_0), h(Y_u))\,du` in fast time (the first correction to
        averaging). For one fast dimension the Poisson equation :math:`-\mathcal L_x\varphi = h` has the
        closed-form solution :math:`\varphi' = -2H/(\tau^2\rho_x)`, :math:`H(y) = \int_{-\infty}^y h\rho_x`,
        so :math:`D = 2E[h\varphi] = (4/\tau^2)\int H^2/\rho_x\,dy`, by quadrature on :meth:`fast_grid`
        with :meth:`fast_log_density`. Why: this variance is as large as 6% of sigma^2 for
        ``fastslow_cubic`` at eps = 5e-3; an Euler-Maruyama likelihood that ignores it reads it as slow noise.
        """
        if self.fast_dim != 1:
            raise NotImplementedError("fluctuation_variance: needs one fast dimension (1-D Poisson equation)")
        x = x.double()
        y = self.fast_grid(x, n_points).double()  # (B, G)
        spacing = (y[:, 1] - y[:, 0]).reshape(1, -1, 1)
        mass = torch.softmax(self.fast_log_density(x.unsqueeze(1), y.unsqueeze(-1)), dim=-1)  # (B, G)
        values = self.slow_drift(x[None, :, None, :], y[None, :, :, None], theta.double()[:, None, None, :])
        weights = mass.unsqueeze(0).unsqueeze(-1)  # (1, B, G, 1)
        centred = values - (weights * values).sum(-2, keepdim=True)  # (T, B, G, d)
        pieces = centred * weights
        tail_integral = pieces.cumsum(-2) - 0.5 * pieces  # H at each node (half its own cell)
        # where the density is below 1e-12 of a cell, rounding in H (about 1e-16) over the density
        # would dominate; what the tails hold there is negligible (H^2 / rho ~ rho)
        inside = (mass > 1e-12).unsqueeze(0).unsqueeze(-1)
        ratio = torch.where(inside, tail_integral**2 / mass.clamp_min(1e-12).unsqueeze(0).unsqueeze(-1), 0.0)
        return self.eps * 4.0 / self.tau**2 * spacing**2 * ratio.sum(-2)

    @property
    def true_theta(self) -> torch.Tensor:
        """The true parameters ``(P,)`` (float64) in the order of ``parameter_names``."""
        return torch.tensor([float(getattr(self, name)) for name in self.parameter_names], dtype=torch.float64)

    def fast_step(self, x, y, h: float, noise):
        """One Euler-Maruyama step of the fast process with ``x`` frozen; ``noise`` is N(0, 1) like ``y``."""
        return y + self.fast_drift(x, y) * (h / self.eps) + self.tau * math.sqrt(h / self.eps) * noise

    # -- ParticleSystem protocol (state = (x, y), x (M, 1, d), y (M, 1, k)) ---------------------
    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        if n_particles != 1:
            raise ValueError(f"n_particles: a fast-slow system simulates one slow path per experiment, but got {n_particles}")
        x = torch.full((n_experiments, 1, self.dim), float(self.initial_x), device=device, dtype=dtype)
        y = self.sample_invariant(x.reshape(-1, self.dim), 1, generator).reshape(n_experiments, 1, self.fast_dim)
        return x, y.to(dtype)

    def step(self, t, state, dt, generator):
        x, y = state
        # one draw for both noises: the micro step dominates simulation time
        noise = torch.randn(tuple(x.shape[:-1]) + (self.dim + self.fast_dim,), generator=generator,
                            device=x.device, dtype=x.dtype)
        cache = getattr(self, "_theta_cache", None)
        if cache is None or cache.device != x.device or cache.dtype != x.dtype:
            cache = self._theta_cache = self.true_theta.to(x)
        new_x = x + self.slow_drift(x, y, cache) * dt + (self.sigma * math.sqrt(dt)) * noise[..., :self.dim]
        new_y = self.fast_step(x, y, dt, noise[..., self.dim:])
        return new_x, new_y

    def positions(self, state) -> torch.Tensor:
        return state[0]

    def extras(self, state) -> Dict[str, torch.Tensor]:
        return {"fast": state[1]}


@register("fastslow_cubic")
class CubicFastSlow(FastSlowSystem):
    r"""Fast OU around the slow variable, cubic coupling.

    .. math:: f_\theta(x, y) = a\,x - b\,y^3, \qquad g(x, y) = x - y, \qquad
              \rho_x = N(x, \tau^2/2), \qquad F(x) = a x - b\,(x^3 + \tfrac32 \tau^2 x).

    The fast step is the exact OU transition with ``x`` frozen, so the simulated fast law is
    exactly :math:`\rho_x` at any step size. Arguments: ``a``, ``b``, ``sigma`` (slow noise),
    ``tau`` (fast noise), ``eps`` (time-scale ratio), ``initial_x``.
    """

    dim = 1
    fast_dim = 1
    parameter_names = ["a", "b"]
    default_t_end = 100.0
    default_dt = 2.5e-3
    default_record_dt = 1e-2

    def __init__(self, a: float = 1.0, b: float = 1.0, sigma: float = 0.8, tau: float = 1.0, eps: float = 5e-3,
                 initial_x: float = 0.0):
        self.a, self.b = float(a), check_positive("b", b)
        self.sigma = check_positive("sigma", sigma)
        self.tau = check_positive("tau", tau)
        self.eps = check_positive("eps", eps)
        self.initial_x = float(initial_x)

    def slow_drift(self, x, y, theta):
        return theta[..., 0:1] * x - theta[..., 1:2] * y**3

    def drift_features(self, x, y):
        x, y = torch.broadcast_tensors(x, y)
        return torch.stack((x, -y**3), dim=-1)

    def fast_drift(self, x, y):
        return x - y

    def averaged_drift(self, x):
        return self.a * x - self.b * (x**3 + 1.5 * self.tau**2 * x)

    def fast_log_density(self, x, y):
        return -((y - x) ** 2).sum(-1) / self.tau**2

    def fast_grid(self, x, n_points):
        spread = 8.0 * self.tau / math.sqrt(2.0)
        unit = torch.linspace(-1.0, 1.0, n_points, dtype=x.dtype, device=x.device)
        return x[..., :1] + spread * unit

    def sample_invariant(self, x, n_samples, generator=None):
        noise = torch.randn(tuple(x.shape[:-1]) + (n_samples, 1), generator=generator, device=x.device, dtype=x.dtype)
        return x.unsqueeze(-2) + self.tau / math.sqrt(2.0) * noise

    def fast_step(self, x, y, h, noise):
        decay = math.exp(-h / self.eps)
        return x + (y - x) * decay + self.tau * math.sqrt((1 - decay**2) / 2.0) * noise


@register("fastslow_tilted_well")
class TiltedWellFastSlow(FastSlowSystem):
    r"""Fast tilted double well: a bimodal :math:`\rho_x` whose modes the slow variable tilts.

    .. math:: f_\theta(x, y) = -a\,x + b\,y, \qquad g(x, y) = y - y^3 + c\,x, \qquad
              \rho_x(y) \propto \exp\!\big(2(y^2/2 - y^4/4 + c\,x\,y)/\tau^2\big),

    :math:`F(x) = -a x + b\,E_{\rho_x}[Y]` by quadrature on a fine grid. The fast step is
    Euler-Maruyama (default step ``eps/20``). Arguments: ``a``, ``b``, ``tilt`` (c),
    ``sigma``, ``tau``, ``eps``, ``initial_x``.
    """

    dim = 1
    fast_dim = 1
    parameter_names = ["a", "b"]
    default_t_end = 100.0
    default_dt = 5e-4
    default_record_dt = 1e-2
    _grid_size = 4001

    def __init__(self, a: float = 1.0, b: float = 1.0, tilt: float = 0.5, sigma: float = 0.5, tau: float = 0.5,
                 eps: float = 1e-2, initial_x: float = 0.0):
        self.a, self.b = float(a), float(b)
        self.tilt = float(tilt)
        self.sigma = check_positive("sigma", sigma)
        self.tau = check_positive("tau", tau)
        self.eps = check_positive("eps", eps)
        self.initial_x = float(initial_x)

    def slow_drift(self, x, y, theta):
        return -theta[..., 0:1] * x + theta[..., 1:2] * y

    def drift_features(self, x, y):
        x, y = torch.broadcast_tensors(x, y)
        return torch.stack((-x, y), dim=-1)

    def fast_drift(self, x, y):
        return y - y**3 + self.tilt * x

    def fast_log_density(self, x, y):
        y = y[..., 0]
        return (y**2 / 2 - y**4 / 4 + self.tilt * x[..., 0] * y) * (2 / self.tau**2)

    def _density_grid(self, x: torch.Tensor):
        """Normalized :math:`\\rho_x` on a grid: ``x (B, 1)`` -> grid ``(G,)``, weights ``(B, G)`` (float64)."""
        grid = torch.linspace(-3.5, 3.5, self._grid_size, dtype=torch.float64, device=x.device)
        energy = (grid**2 / 2 - grid**4 / 4 + self.tilt * x.double().reshape(-1, 1) * grid) * (2 / self.tau**2)
        weights = torch.softmax(energy, dim=-1)
        return grid, weights

    def invariant_mean(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`E_{\\rho_x}[Y]` for ``x (..., 1)`` -> ``(..., 1)`` by quadrature."""
        grid, weights = self._density_grid(x.reshape(-1, 1))
        return (weights @ grid).reshape(x.shape).to(x.dtype)

    def averaged_drift(self, x):
        return -self.a * x + self.b * self.invariant_mean(x)

    def fast_grid(self, x, n_points):
        grid = torch.linspace(-3.5, 3.5, n_points, dtype=x.dtype, device=x.device)
        return grid.expand(x.shape[0], n_points)

    def invariant_density(self, x: torch.Tensor):
        """Grid ``(G,)`` and density values ``(B, G)`` of :math:`\\rho_x` for ``x (B, 1)``."""
        grid, weights = self._density_grid(x)
        return grid, weights / (grid[1] - grid[0])

    def sample_invariant(self, x, n_samples, generator=None):
        # inverse-CDF sampling on the quadrature grid
        grid, weights = self._density_grid(x.reshape(-1, 1))
        cdf = weights.cumsum(-1)
        uniform = torch.rand((cdf.shape[0], n_samples), generator=generator, device=x.device, dtype=torch.float64)
        index = torch.searchsorted(cdf, uniform * cdf[:, -1:]).clamp(max=grid.numel() - 1)
        return grid[index].reshape(tuple(x.shape[:-1]) + (n_samples, 1)).to(x.dtype)
