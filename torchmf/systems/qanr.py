r"""1-D quadratic attraction / Newtonian repulsion ``qanr_1d`` (WSINDy paper, sec. 5.2).

.. math:: dX_i = -(K' * \mu^N)(X_i)\,dt + \sigma(X_i)\, dW_i, \qquad K(x) = \tfrac12 x^2 - |x|.

In 1-D the force is exact in :math:`O(N \log N)`: with the convention :math:`K'(0) = 0`,
:math:`(K' * \mu^N)(x_i) = x_i - \bar x - (n_<(x_i) - n_>(x_i))/N`, where :math:`n_<, n_>` count
the particles left and right of :math:`x_i` (a sort gives both). Diffusivity modes
(``diffusion``): ``"none"`` (:math:`\sigma = 0`), ``"constant"`` (:math:`\sigma = \sqrt2\,0.1`),
``"variable"`` (:math:`\sigma(x) = \sqrt2\,0.1\,|x - 2|`). Initial law: equal mixture of three
Gaussians; the default centres (0, 1.25, 4) and spread 0.05 resemble the authors' published
dataset. Data every 0.01 from a micro step of 0.001, as in the paper.
"""
from __future__ import annotations

import math

import torch

from .._validation import check_choice, check_nonnegative, check_points
from . import register
from .base import ParticleSystem

DIFFUSION_MODES = ("none", "constant", "variable")


def qanr_mean_field_force(x: torch.Tensor) -> torch.Tensor:
    """Exact :math:`(K' * \\mu^N)(x_i)` of the QANR potential for 1-D ensembles ``(..., N, 1)``."""
    x = check_points("x", x, 1)
    values = x.squeeze(-1)
    n = values.shape[-1]
    sorted_values, order = values.sort(dim=-1)
    # Ties (equal positions) contribute sign(0) = 0: for each sorted entry count the values strictly
    # below (first index of its tie group) and strictly above (n - 1 - last index of its group).
    # Group bounds come from running maxima/minima over "new value starts here" flags: O(N), no search.
    index = torch.arange(n, device=values.device).expand_as(sorted_values)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    below = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    last = torch.where(ends, index, torch.full_like(index, n - 1)).flip(-1).cummin(dim=-1).values.flip(-1)
    above = n - 1 - last
    # the mean as one sequential float64 sum (cumsum scans in order on every thread count): torch's
    # parallel sum splits the particles among threads above 32768 of them, and its rounding then
    # depended on the thread count (1 vs 2 threads differed at N = 5e4, issue 25)
    mean = (sorted_values.double().cumsum(-1)[..., -1:] / n).to(values.dtype)
    sorted_force = sorted_values - mean - (below - above).to(values.dtype) / n
    force = torch.empty_like(sorted_force).scatter_(-1, order, sorted_force)
    return force.unsqueeze(-1)


@register("qanr_1d")
class QANR1D(ParticleSystem):
    """Arguments: ``diffusion`` mode, ``sigma_scale`` (the 0.1 above), ``centers``, ``initial_std``."""

    dim = 1
    default_particles = 8000
    default_t_end = 1.0
    default_dt = 1e-3
    default_record_dt = 1e-2

    def __init__(self, diffusion: str = "none", sigma_scale: float = 0.1, centers=(0.0, 1.25, 4.0),
                 initial_std: float = 0.05):
        self.diffusion = check_choice("diffusion", diffusion, DIFFUSION_MODES)
        self.sigma_scale = check_nonnegative("sigma_scale", sigma_scale)
        self.centers = [float(c) for c in centers]
        if not self.centers:
            raise ValueError("centers: expected at least one mixture centre")
        self.initial_std = check_nonnegative("initial_std", initial_std)

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion :math:`\\sigma(x)` with the shape of ``x``."""
        scale = math.sqrt(2) * self.sigma_scale
        if self.diffusion == "none":
            return torch.zeros_like(x)
        if self.diffusion == "constant":
            return torch.full_like(x, scale)
        return scale * (x - 2).abs()

    def grad_K(self, x: torch.Tensor) -> torch.Tensor:
        """True interaction force kernel :math:`K'(x) = x - \\mathrm{sign}(x)`."""
        return x - torch.sign(x)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        centers = torch.tensor(self.centers, device=device, dtype=dtype)
        choice = torch.randint(len(self.centers), (n_experiments, n_particles, 1), generator=generator, device=device)
        noise = torch.randn((n_experiments, n_particles, 1), generator=generator, device=device, dtype=dtype)
        return centers[choice] + self.initial_std * noise

    def step(self, t, state, dt, generator):
        drift = -qanr_mean_field_force(state)
        if self.diffusion == "none":
            return state + drift * dt
        noise = torch.randn(state.shape, generator=generator, device=state.device, dtype=state.dtype)
        return state + drift * dt + self.sigma(state) * noise * math.sqrt(dt)
