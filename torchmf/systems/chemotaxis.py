r"""1-D bacterial chemotaxis with internal excitation/adaptation and six flagellar motors ``chemotaxis``.

Micro-model in the spirit of the agent-based simulator the LOT paper uses in section 7 (after
Setayeshgar, Gear, Othmer and Kevrekidis 2005). Each bacterium carries a position :math:`x`, an
excitation :math:`u_1`, an adaptation variable :math:`u_2`, six motor states
:math:`s^{(i)} \in \{0 = \text{CW}, 1 = \text{CCW}\}` and a swimming direction :math:`\pm 1`:

.. math::
    \dot u_1 = \frac{f(S(x)) - u_1 - u_2}{t_e}, \qquad \dot u_2 = \frac{f(S(x)) - u_2}{t_a},
    \qquad f(S) = \frac{S}{K_D + S},

integrated exactly over a micro step with the signal frozen. Each motor switches CW -> CCW at rate
:math:`\omega\, p(u_1)` and CCW -> CW at rate :math:`\omega (1 - p(u_1))`, with the CCW bias
:math:`p(u_1) = 1 / (1 + \frac{1 - p_0}{p_0} e^{-g u_1})`. A cell runs at speed :math:`v_{cell}`
while at least four motors ("more than three") turn CCW and tumbles otherwise; a tumble picks a
new direction at random. Walls at ``lower``/``upper`` reflect.

Paper values (section 7.1): :math:`S` = normal pdf (mean 6.5, sd 1.35), ``N = 10,000``,
``h = 1/16``, :math:`v_{cell} = 0.003`, ``T = 4000``. The paper defers the other constants to its
reference [29]; ``t_e``, ``t_a``, ``K_D``, :math:`\omega`, :math:`p_0`, ``gain``, the domain and the
initial cloud below are this module's own choices (documented defaults, all parameters).

The state is a :class:`ChemotaxisState`; :meth:`Chemotaxis.extras` records ``u1``, ``u2``,
``motors`` (6 columns) and ``direction``. :meth:`Chemotaxis.reinitialize` implements the two
re-initialization schemes of Table 7.4 used by :class:`torchmf.lot.ProjectiveIntegrator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .._validation import check_choice, check_positive
from . import register
from .base import ParticleSystem

__all__ = ["Chemotaxis", "ChemotaxisState", "REINIT_SCHEMES"]

REINIT_SCHEMES = ("history-dependent", "history-independent")
MOTORS = 6
RUN_THRESHOLD = 4


@dataclass
class ChemotaxisState:
    """Positions ``x (M, N, 1)``, ``u1``/``u2 (M, N)``, ``motors (M, N, 6)`` (1.0 = CCW),
    ``direction (M, N)`` (+1/-1)."""

    x: torch.Tensor
    u1: torch.Tensor
    u2: torch.Tensor
    motors: torch.Tensor
    direction: torch.Tensor


@register("chemotaxis")
class Chemotaxis(ParticleSystem):
    """Arguments: ``speed`` (:math:`v_{cell}`), ``mean``/``sd`` (attractant profile), ``t_e``,
    ``t_a``, ``k_d``, ``switch_rate`` (:math:`\\omega`), ``ccw_bias`` (:math:`p_0`), ``gain``
    (:math:`g`), ``lower``/``upper`` (walls), ``start``/``start_width`` (initial cloud uniform on
    ``start +- start_width/2``)."""

    dim = 1
    default_particles = 10_000
    default_t_end = 4000.0
    default_dt = 1.0 / 16.0
    default_record_dt = 100.0

    def __init__(self, speed: float = 0.003, mean: float = 6.5, sd: float = 1.35, t_e: float = 1.0,
                 t_a: float = 60.0, k_d: float = 0.1, switch_rate: float = 2.0, ccw_bias: float = 0.8,
                 gain: float = 60.0, lower: float = 0.0, upper: float = 10.0, start: float = 5.0,
                 start_width: float = 0.5):
        self.speed = check_positive("speed", speed)
        self.mean = float(mean)
        self.sd = check_positive("sd", sd)
        self.t_e = check_positive("t_e", t_e)
        self.t_a = check_positive("t_a", t_a)
        self.k_d = check_positive("k_d", k_d)
        self.switch_rate = check_positive("switch_rate", switch_rate)
        self.ccw_bias = check_positive("ccw_bias", ccw_bias)
        if not self.ccw_bias < 1:
            raise ValueError(f"ccw_bias: expected a probability in (0, 1), but got {ccw_bias}")
        self.gain = float(gain)
        self.lower, self.upper = float(lower), float(upper)
        if not self.upper > self.lower:
            raise ValueError(f"upper: expected > lower = {self.lower}, but got {self.upper}")
        self.start = float(start)
        self.start_width = check_positive("start_width", start_width)
        if not self.lower <= self.start - start_width / 2 < self.start + start_width / 2 <= self.upper:
            raise ValueError(f"start: expected the initial interval inside [{self.lower}, {self.upper}], "
                             f"but got {self.start} +- {start_width / 2}")

    # -- model pieces ----------------------------------------------------------------------------------
    def attractant(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`S(x)`, the normal pdf with ``mean`` and ``sd``."""
        return torch.exp(-0.5 * ((x - self.mean) / self.sd) ** 2) / (self.sd * math.sqrt(2 * math.pi))

    def signal(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`f(S(x))` for positions ``(..., 1)`` -> ``(...)``."""
        s = self.attractant(x.squeeze(-1))
        return s / (self.k_d + s)

    def ccw_probability(self, u1: torch.Tensor) -> torch.Tensor:
        odds = (1 - self.ccw_bias) / self.ccw_bias
        return 1 / (1 + odds * torch.exp(-self.gain * u1))

    def du2_dt(self, state: ChemotaxisState) -> torch.Tensor:
        """:math:`\\dot u_2` of every cell, ``(M, N)``."""
        return (self.signal(state.x) - state.u2) / self.t_a

    # -- protocol --------------------------------------------------------------------------------------
    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        shape = (n_experiments, n_particles)
        u = torch.rand(shape + (1,), generator=generator, device=device, dtype=dtype)
        x = self.start + (u - 0.5) * self.start_width
        u2 = self.signal(x)
        motors = (torch.rand(shape + (MOTORS,), generator=generator, device=device, dtype=dtype)
                  < self.ccw_bias).to(dtype)
        return ChemotaxisState(x, torch.zeros_like(u2), u2, motors, self._random_direction(shape, generator, x))

    def _random_direction(self, shape, generator, like):
        coin = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
        return torch.where(coin < 0.5, -torch.ones_like(coin), torch.ones_like(coin))

    def step(self, t, state: ChemotaxisState, dt, generator):
        f = self.signal(state.x)
        u2 = f + (state.u2 - f) * math.exp(-dt / self.t_a)
        target = f - u2
        u1 = target + (state.u1 - target) * math.exp(-dt / self.t_e)
        was_running = state.motors.sum(-1) >= RUN_THRESHOLD
        p = self.ccw_probability(u1).unsqueeze(-1)
        rate = self.switch_rate * torch.where(state.motors > 0.5, 1 - p, p)
        flip = torch.rand(state.motors.shape, generator=generator, device=rate.device, dtype=rate.dtype) \
            < -torch.expm1(-rate * dt)
        motors = torch.where(flip, 1 - state.motors, state.motors)
        running = motors.sum(-1) >= RUN_THRESHOLD
        # a tumble reorients: a run that starts after one picks a fresh direction
        fresh = self._random_direction(running.shape, generator, state.x)
        direction = torch.where(running & ~was_running, fresh, state.direction)
        x = state.x + (self.speed * dt * direction * running.to(state.x.dtype)).unsqueeze(-1)
        x, direction = self._reflect(x, direction)
        return ChemotaxisState(x, u1, u2, motors, direction)

    def _reflect(self, x, direction):
        length = self.upper - self.lower
        folded = torch.remainder(x - self.lower, 2 * length)
        outside = folded > length
        x = self.lower + torch.where(outside, 2 * length - folded, folded)
        # an odd number of wall crossings reverses the swimming direction
        return x, torch.where(outside.squeeze(-1), -direction, direction)

    def positions(self, state: ChemotaxisState) -> torch.Tensor:
        return state.x

    def extras(self, state: ChemotaxisState):
        return {"u1": state.u1.unsqueeze(-1), "u2": state.u2.unsqueeze(-1), "motors": state.motors,
                "direction": state.direction.unsqueeze(-1)}

    # -- LOT support -----------------------------------------------------------------------------------
    def with_positions(self, state: ChemotaxisState, positions: torch.Tensor) -> ChemotaxisState:
        """The same hidden state at new positions ``(M, N, 1)`` (folded back inside the walls)."""
        x, direction = self._reflect(positions.to(state.x), state.direction)
        return replace(state, x=x, direction=direction)

    def reinitialize(self, state: ChemotaxisState, positions: torch.Tensor, step: float, scheme: str,
                     generator=None) -> ChemotaxisState:
        """Hidden state after a large step of length ``step`` to ``positions (M, N, 1)`` (Table 7.4).

        ``state`` is the state at the central snapshot :math:`t_0`. ``"history-dependent"``:
        :math:`u_1 = 0`, :math:`u_2 = u_2(t_0) + H \\dot u_2(t_0)`, motors and direction kept.
        ``"history-independent"``: :math:`u_1 = 0`, :math:`u_2 = f(S(\\tilde x))`, all motors
        CW (tumbling), a random direction.
        """
        scheme = check_choice("scheme", scheme, REINIT_SCHEMES)
        step = check_positive("step", step)
        moved = self.with_positions(state, positions)
        if scheme == "history-dependent":
            u2 = state.u2 + step * self.du2_dt(state)
            return replace(moved, u1=torch.zeros_like(state.u1), u2=u2)
        direction = self._random_direction(state.direction.shape, generator, state.x)
        return replace(moved, u1=torch.zeros_like(state.u1), u2=self.signal(moved.x),
                       motors=torch.zeros_like(state.motors), direction=direction)

    def parameters(self) -> dict:
        return {name: getattr(self, name) for name in (
            "speed", "mean", "sd", "t_e", "t_a", "k_d", "switch_rate", "ccw_bias", "gain", "lower", "upper",
            "start", "start_width")}

