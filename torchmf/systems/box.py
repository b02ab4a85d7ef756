r"""Reflected Brownian motion in a box ``box_diffusion`` (LOT paper, Table 6.1).

:math:`x(t + h) = x(t) + v_c Z`, :math:`Z \sim N(0, h I)`, reflected (repeatedly) across the walls of
:math:`[x_{min}, x_{max}]^d`; all particles start at one point. The law tends to the uniform
distribution on the box. Defaults are Table 6.1: ``N = 10,000``, ``h = 1/16``, ``v_c = 1/8``,
start ``(5, 5)``, box ``[0, 10]^2``, ``T = 2000``.
"""
from __future__ import annotations

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
