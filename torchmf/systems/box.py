r"""Reflected Brownian motion in a box ``box_diffusion`` (LOT paper, Table 6.1).

:math:`x(t + h) = x(t) + v_c Z`, :math:`Z \sim N(0, h I)`, reflected (repeatedly) across the walls of
:math:`[x_{min}, x_{max}]^d`; all particles start at one point. The law tends to the uniform
distribution on the box. Defaults are Table 6.1: ``N = 10,000``, ``h = 1/16``, ``v_c = 1/8``,
start ``(5, 5)``, box ``[0, 10]^2``, ``T = 2000``.

The law is known in closed form (the method of images): each coordinate is a free Brownian motion
:math:`x_0 + v_c W_t` folded into the box, so :meth:`BoxDiffusion.exact_sample` draws the law at
any time in one step, and :meth:`BoxDiffusion.exact_velocity` is the velocity of the law,
:math:`-\tfrac{v_c^2}{2} \nabla \log \rho_t` (the LOT oracle).
"""
from __future__ import annotations

import math

import torch

from .._validation import check_int, check_positive
from ..sde import McKeanVlasovSDE, ReflectingBox
from . import register
from .base import SDESystem


@register("box_diffusion")
class BoxDiffusion(SDESystem):
    """Arguments: ``speed`` (:math:`v_c`), ``lower``, ``upper`` (box bounds), ``start``
    (initial point, default the box centre), ``dim``."""

    dim = 2
    default_particles = 10_000
    default_t_end = 2000.0
    default_dt = 1.0 / 16.0
    default_record_dt = 10.0

    def __init__(self, speed: float = 0.125, lower: float = 0.0, upper: float = 10.0, start=None, dim: int = 2):
        self.speed = check_positive("speed", speed)
        self.dim = check_int("dim", dim, minimum=1)
        self.lower, self.upper = float(lower), float(upper)
        self.start = [0.5 * (self.lower + self.upper)] * self.dim if start is None else [float(v) for v in start]
        if len(self.start) != self.dim:
            raise ValueError(f"start: expected {self.dim} numbers, but got {len(self.start)}")
        self.boundary = ReflectingBox([self.lower] * self.dim, [self.upper] * self.dim)
        if not all(self.lower <= v <= self.upper for v in self.start):
            raise ValueError(f"start: expected a point inside [{self.lower}, {self.upper}]^{self.dim}, but got {self.start}")
        self.sde = McKeanVlasovSDE(self.dim, diffusion=self.speed)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        start = torch.tensor(self.start, device=device, dtype=dtype)
        return start.expand(n_experiments, n_particles, self.dim).clone()

    def exact_sample(self, n_particles: int, t: float, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """``(N, d)``: a sample of the law at time ``t`` (free Brownian motion folded into the box)."""
        t = check_positive("t", t)
        start = torch.tensor(self.start, dtype=dtype)
        free = start + self.speed * math.sqrt(t) * torch.randn(n_particles, self.dim, generator=generator, dtype=dtype)
        return self.boundary.apply(free)

    def exact_velocity(self, x: torch.Tensor, t: float, images: int = 4) -> torch.Tensor:
        """``(N, d) -> (N, d)``: the velocity of the law at ``t``, :math:`-\tfrac{v_c^2}{2}\partial \log\rho_t`
        per coordinate, with ``images`` reflections of the start on each side (ample while
        :math:`v_c\sqrt t` is below a few box widths)."""
        t = check_positive("t", t)
        width = self.upper - self.lower
        variance = self.speed ** 2 * t
        start = torch.tensor(self.start, dtype=x.dtype, device=x.device)
        shifts = 2 * width * torch.arange(-images, images + 1, dtype=x.dtype, device=x.device)
        # images of the start: x0 + 2nL and 2 lower - x0 + 2nL (reflection across the lower wall)
        centres = torch.cat([start[:, None] + shifts, (2 * self.lower - start)[:, None] + shifts], 1)  # (d, 2m)
        offsets = x.unsqueeze(-1) - centres                                                         # (N, d, 2m)
        log_weights = -offsets.pow(2) / (2 * variance)
        weights = torch.softmax(log_weights, dim=-1)
        score = -(weights * offsets).sum(-1) / variance
        return -0.5 * self.speed ** 2 * score
