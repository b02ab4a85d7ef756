r"""2-D self-propelled particles schooling in a ring inside a circular arena: ``swarm_ring``.

A stand-in for the tracked fish of the nudging paper's collective-motion benchmark (units:
pixels and seconds; the arena is centred in a 125 x 125 px frame). Each particle has a position
:math:`x_i` and a velocity :math:`u_i`:

.. math::
    dx_i = u_i\,dt, \qquad
    du_i = \Big[\alpha\big(1 - \tfrac{|u_i|^2}{v_0^2}\big)u_i
      - \kappa\,(r_i - R)\,e_i - \gamma\,(u_i\cdot e_i)\,e_i
      - k_w\,(r_i - R_w)_+\, e_i - c_r (\nabla K * \mu^N)(x_i)\Big]dt + \sigma\, dW_i,

with :math:`r_i = |x_i - c|`, :math:`e_i = (x_i - c)/r_i`: self-propulsion towards the cruising
speed :math:`v_0`, a preferred swimming radius :math:`R` (fish follow the wall at a distance),
damping of radial motion, a stiff soft wall at the arena radius :math:`R_w`, and a short-range
Morse repulsion :math:`K(r) = e^{-r/\ell}` between fish (mean-field, grid backend). Fish start on
the ring, swimming counter-clockwise with scattered speeds and headings.

The state is ``(M, N, 4)`` = ``(x, y, u_x, u_y)``; ``positions`` records ``(M, N, 2)`` and the
velocities are recorded as the extra ``"velocities"`` ``(M, N, 2)``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from .._validation import check_nonnegative, check_positive
from ..grid import Grid
from ..interaction import InteractionForce
from ..kernels import MorsePotential
from . import register
from .base import ParticleSystem

__all__ = ["SwarmRing", "FRAME"]

FRAME = 125.0  # pixels: the image frame is [0, FRAME]^2


@register("swarm_ring")
class SwarmRing(ParticleSystem):
    """Arguments: ``speed`` :math:`v_0` (25 px/s), ``propulsion`` :math:`\\alpha` (2), ``ring_radius`` R
    (35 px), ``ring_stiffness`` :math:`\\kappa` (6), ``radial_damping`` :math:`\\gamma` (1.5),
    ``arena_radius`` :math:`R_w` (55 px), ``wall_stiffness`` :math:`k_w` (50), ``repulsion``
    :math:`c_r` (400), ``repulsion_length`` :math:`\\ell` (3 px), ``noise`` :math:`\\sigma` (12)."""

    dim = 2
    default_particles = 2000
    default_t_end = 6.25
    default_dt = 0.01
    default_record_dt = 0.05

    def __init__(self, speed: float = 25.0, propulsion: float = 2.0, ring_radius: float = 35.0,
                 ring_stiffness: float = 6.0, radial_damping: float = 1.5, arena_radius: float = 55.0,
                 wall_stiffness: float = 50.0, repulsion: float = 400.0, repulsion_length: float = 3.0,
                 noise: float = 12.0):
        self.speed = check_positive("speed", speed)
        self.propulsion = check_nonnegative("propulsion", propulsion)
        self.ring_radius = check_positive("ring_radius", ring_radius)
        self.ring_stiffness = check_nonnegative("ring_stiffness", ring_stiffness)
        self.radial_damping = check_nonnegative("radial_damping", radial_damping)
        self.arena_radius = check_positive("arena_radius", arena_radius)
        if self.arena_radius >= FRAME / 2:
            raise ValueError(f"arena_radius: expected a radius below {FRAME / 2} px (the frame), but got {arena_radius}")
        self.wall_stiffness = check_nonnegative("wall_stiffness", wall_stiffness)
        self.repulsion = check_nonnegative("repulsion", repulsion)
        self.repulsion_length = check_positive("repulsion_length", repulsion_length)
        self.noise = check_nonnegative("noise", noise)
        self.centre = (FRAME / 2, FRAME / 2)
        self._force = InteractionForce(MorsePotential(0.0, 1.0, 1.0, self.repulsion_length), backend="grid",
                                       grid=Grid(0.0, FRAME, 128, dim=2), check=False)

    # -- protocol -------------------------------------------------------------------------------------
    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        shape = (n_experiments, n_particles)

        def normal(scale):
            return scale * torch.randn(shape, generator=generator, device=device, dtype=dtype)

        angle = 2 * math.pi * torch.rand(shape, generator=generator, device=device, dtype=dtype)
        radius = self.ring_radius + normal(3.0)
        x = self.centre[0] + radius * torch.cos(angle)
        y = self.centre[1] + radius * torch.sin(angle)
        speed = self.speed * (1 + normal(0.15))
        heading = angle + math.pi / 2 + normal(0.2)
        return torch.stack((x, y, speed * torch.cos(heading), speed * torch.sin(heading)), -1)

    def acceleration(self, state: torch.Tensor) -> torch.Tensor:
        """Deterministic part of :math:`du/dt` for states ``(M, N, 4)``: ``(M, N, 2)``."""
        position, velocity = state[..., :2], state[..., 2:]
        offset = position - position.new_tensor(self.centre)
        radius = offset.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        normal = offset / radius
        speed_squared = (velocity * velocity).sum(-1, keepdim=True)
        radial_speed = (velocity * normal).sum(-1, keepdim=True)
        total = self.propulsion * (1 - speed_squared / self.speed ** 2) * velocity
        total = total - (self.ring_stiffness * (radius - self.ring_radius) + self.radial_damping * radial_speed) * normal
        total = total - self.wall_stiffness * torch.relu(radius - self.arena_radius) * normal
        if self.repulsion > 0:
            total = total - self.repulsion * self._force(position)
        return total

    def step(self, t, state, dt, generator):
        noise = torch.randn(state.shape[:-1] + (2,), generator=generator, device=state.device, dtype=state.dtype)
        velocity = state[..., 2:] + self.acceleration(state) * dt + self.noise * math.sqrt(dt) * noise
        position = state[..., :2] + velocity * dt  # semi-implicit Euler: positions move with the new velocity
        return torch.cat((position, velocity), -1)

    def positions(self, state) -> torch.Tensor:
        return state[..., :2]

    def extras(self, state) -> Dict[str, torch.Tensor]:
        return {"velocities": state[..., 2:]}

    def image_grid(self, pixels: int = 125) -> Grid:
        """The frame as an image grid ``pixels x pixels`` (125 in the paper's density comparison)."""
        return Grid(0.0, FRAME, pixels, dim=2)

    def image(self, positions: torch.Tensor, bandwidth: float = 2.0, pixels: int = 125) -> torch.Tensor:
        """Gaussian KDE image of the fish inside the frame, ``(..., N, 2) -> (..., pixels, pixels)``.

        Like a camera, the image sees only the frame: fish outside it add nothing, and the image
        keeps the ``1/N`` normalization of the whole school (its mass drops below 1), so a
        forecast that leaves the frame is penalized rather than renormalized.
        """
        from ..metrics import smoothed_density

        grid = self.image_grid(pixels)
        flat = positions.reshape(-1, *positions.shape[-2:])
        inside = ((flat >= 0) & (flat <= FRAME)).all(-1)
        images = []
        for points, keep in zip(flat, inside):
            weights = points.new_full((int(keep.sum()),), 1.0 / points.shape[0])
            if weights.numel() == 0:
                images.append(points.new_zeros(grid.shape))
            else:
                images.append(smoothed_density(points[keep], grid, bandwidth, weights))
        return torch.stack(images).reshape(*positions.shape[:-2], *grid.shape)

    def image_error(self, positions: torch.Tensor, reference: torch.Tensor, bandwidth: float = 2.0,
                    pixels: int = 125) -> torch.Tensor:
        """:math:`L^2` distance of the KDE images of two schools ``(..., N, 2)``: ``(...)`` (pixel units)."""
        difference = self.image(positions, bandwidth, pixels) - self.image(reference, bandwidth, pixels)
        return (difference.pow(2).sum((-1, -2)) * self.image_grid(pixels).cell_volume).sqrt()
