r"""The micro-simulator protocol driven by the projective integrator, and the policies that
re-initialize hidden per-particle state after a large step.

Micro-simulators follow a small protocol (:class:`MicroSimulator`): ``dt`` (micro step ``h``),
``state`` (read and assign; may carry hidden per-particle variables), ``step(n)``,
``positions() -> (N, d)`` and ``set_positions((N, d))``. :class:`SystemSimulator` adapts any
registered :mod:`torchmf.systems` system. :class:`KeepHiddenState` (the default) and
:class:`SystemReinitialization` are the re-initialization policies.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int, check_points, check_positive
from ..sde import make_generator

_PROTOCOL = ("dt", "state", "step", "positions", "set_positions")


# -- micro-simulators ---------------------------------------------------------------------------------
class MicroSimulator:
    """Protocol of the micro-simulators driven by :class:`~torchmf.lot.ProjectiveIntegrator` (duck-typed).

    ``dt``: micro step ``h``; ``state``: the full state (assignable; may carry hidden per-particle
    variables); ``step(n)``: advance ``n`` micro steps; ``positions() -> (N, d)``;
    ``set_positions((N, d))``: replace the positions, keeping the rest of the state. Optional:
    ``time`` (set by the integrator after a large step).
    """

    dt: float
    state: object

    def step(self, n: int) -> None:
        raise NotImplementedError

    def positions(self) -> torch.Tensor:
        raise NotImplementedError

    def set_positions(self, positions: torch.Tensor) -> None:
        raise NotImplementedError


def check_simulator(simulator) -> None:
    """Raise ``TypeError`` naming what ``simulator`` lacks of the :class:`MicroSimulator` protocol."""
    missing = [name for name in _PROTOCOL if not hasattr(simulator, name)]
    not_callable = [name for name in ("step", "positions", "set_positions")
                    if hasattr(simulator, name) and not callable(getattr(simulator, name))]
    if missing or not_callable:
        raise TypeError(f"simulator: expected the micro-simulator protocol {list(_PROTOCOL)} "
                        f"(step, positions, set_positions callable), but {type(simulator).__name__} "
                        f"lacks {missing} and has non-callable {not_callable}")
    check_positive("simulator.dt", simulator.dt)


class SystemSimulator(MicroSimulator):
    """Adapter from a :class:`torchmf.systems.ParticleSystem` (``initial_state``, ``step``,
    ``positions``) to the micro-simulator protocol, with one experiment of ``n_particles``.

    ``set_positions`` uses the system's ``with_positions(state, positions)`` when it has hidden
    state; otherwise the state is the positions, which are folded back by the system's
    ``boundary`` (a predicted position outside the domain is not a valid state).
    """

    def __init__(self, system, n_particles: int, seed: Optional[int] = 0, dt: Optional[float] = None,
                 device=None, dtype=torch.float32, initial_state=None):
        for name in ("initial_state", "step", "positions"):
            if not callable(getattr(system, name, None)):
                raise TypeError(f"system: expected a torchmf.systems.ParticleSystem with {name}(), "
                                f"but got {type(system).__name__}")
        self.system = system
        self.n_particles = check_int("n_particles", n_particles, minimum=1)
        self.dt = check_positive("dt", system.default_dt if dt is None else dt)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = make_generator(seed, self.device)
        self.time = 0.0
        self.steps = 0
        self.state = initial_state if initial_state is not None else system.initial_state(
            self.n_particles, 1, self.generator, self.device, dtype)

    def step(self, n: int) -> None:
        n = check_int("n", n, minimum=0)
        with torch.no_grad():
            for _ in range(n):
                self.state = self.system.step(self.time, self.state, self.dt, self.generator)
                self.time += self.dt
        self.steps += n

    def positions(self) -> torch.Tensor:
        return self.system.positions(self.state)[0]

    def extras(self) -> dict:
        return {name: value[0] for name, value in self.system.extras(self.state).items()}

    def set_positions(self, positions: torch.Tensor) -> None:
        current = self.positions()
        positions = check_points("positions", positions, current.shape[-1])
        if positions.shape != current.shape:
            raise ValueError(f"positions: expected shape {tuple(current.shape)}, but got {tuple(positions.shape)}")
        positions = positions.to(current)
        if hasattr(self.system, "with_positions"):
            self.state = self.system.with_positions(self.state, positions.unsqueeze(0))
        elif isinstance(self.state, torch.Tensor):
            boundary = getattr(self.system, "boundary", None)
            self.state = boundary.apply(positions.unsqueeze(0)) if boundary is not None else positions.unsqueeze(0).clone()
        else:
            raise TypeError(f"system: {type(self.system).__name__} has a non-tensor state but no "
                            "with_positions(state, positions) method")


# -- re-initialization of hidden state after a large step ------------------------------------------------
class KeepHiddenState:
    """Default policy: the state at the central snapshot with the predicted positions (for
    position-only systems this is just the predicted positions)."""

    def __call__(self, simulator, centre_state, positions, step: float) -> None:
        simulator.state = centre_state
        simulator.set_positions(positions)


class SystemReinitialization:
    """Delegates to ``simulator.system.reinitialize(centre_state, positions (1, N, d), step, scheme,
    generator)``; the chemotaxis system provides the two schemes of Table 7.4,
    ``"history-dependent"`` and ``"history-independent"``."""

    def __init__(self, scheme: str):
        self.scheme = scheme

    def __call__(self, simulator, centre_state, positions, step: float) -> None:
        system = getattr(simulator, "system", None)
        if not callable(getattr(system, "reinitialize", None)):
            raise TypeError(f"reinit: scheme {self.scheme!r} needs a simulator whose system has reinitialize(), "
                            f"but got {type(system).__name__}")
        simulator.state = system.reinitialize(centre_state, positions.unsqueeze(0), step, self.scheme,
                                              getattr(simulator, "generator", None))


def _reinit_policy(reinit):
    if reinit is None:
        return KeepHiddenState()
    if isinstance(reinit, str):
        return SystemReinitialization(reinit)
    if not callable(reinit):
        raise TypeError(f"reinit: expected None, a scheme name or a callable(simulator, state, positions, H), "
                        f"but got {type(reinit).__name__}")
    return reinit
