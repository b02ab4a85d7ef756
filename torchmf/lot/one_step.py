r"""A large step scored on its own: one projective cycle from a control cloud, against the oracle
Euler step and standing still from the same cloud, in one call.

After the first large step a projective run's own cloud is already off the law, so comparing later
steps with "standing still" from that cloud measures the earlier steps, not this one. Here every
step starts from a cloud of the true law (a control run at the window's start): the window is
sampled and grown as in the integrator (:func:`~torchmf.lot.window.sample_window`), and the same
central cloud is moved by

- the LOT velocity (the integrator's estimator and action),
- the oracle velocity (the exact velocity of the law, when the caller knows it): the Euler
  step's own truncation, a floor no velocity estimate can beat,
- nothing (standing still),
- the LOT paper's section 5.2 average on the paper's window (``2k+1`` snapshots, its own centre),

and each is scored by W2 to an independent sample of the law at the landing time, over the sampling
floor W2 between two independent samples there.

Shapes: clouds ``(N, d)``.
"""
from __future__ import annotations

from typing import Callable, Optional

from ..metrics import w2
from .velocity import lot_velocity
from .window import sample_window

__all__ = ["one_step_test"]


class _NoRecorder:
    """The recorder interface of :func:`sample_window`, recording nothing."""

    def record(self, clock, stage):
        pass

    def insert(self, clock, positions, stage):
        pass

    def count(self, steps):
        pass


def one_step_test(integrator, simulator, start_time: float, truth: Callable[[float], tuple],
                  oracle_velocity: Optional[Callable] = None, paper: bool = True) -> dict:
    """Score one large step of ``integrator`` (module docstring).

    Arguments:
        integrator: a :class:`~torchmf.lot.ProjectiveIntegrator` (its ``k``, ``step`` H, estimator,
            window growth and action on an insignificant velocity are used).
        simulator: a micro-simulator holding a cloud of the true law at ``start_time``.
        truth: ``t -> (cloud, cloud')``, two independent ``(N, d)`` samples of the law at time ``t``.
        oracle_velocity: ``(x (N, d), t) -> (N, d)``, the exact velocity of the law (optional).
        paper: also score the section 5.2 average (``2k`` more transport solves).

    Returns a dict: ``t_centre``, ``H``, ``k`` (the half window used), ``action``, ``floor``, the W2
    over the floor of ``lot``, ``standing_still``, ``oracle`` (when given) and ``paper`` (its own
    centre ``t_centre_paper``), and the estimate's ``speed``, ``standard_error`` and
    ``velocity_error`` (RMS, against the oracle velocity when given).
    """
    from .integrator import ProjectiveIntegrator
    from .simulators import check_simulator

    if not isinstance(integrator, ProjectiveIntegrator):
        raise TypeError(f"integrator: expected a ProjectiveIntegrator, but got {type(integrator).__name__}")
    check_simulator(simulator)
    for name, function in (("truth", truth), ("oracle_velocity", oracle_velocity)):
        if function is not None and not callable(function):
            raise TypeError(f"{name}: expected a callable, but got {type(function).__name__}")
    if truth is None:
        raise TypeError("truth: expected a callable t -> (cloud, cloud'), but got None")
    dt = float(simulator.dt)
    step = integrator.plan(dt)["step"]
    length = step * dt
    window = sample_window(integrator, simulator, _NoRecorder(), 0, dt, length)
    centre = window.snapshots[window.k]
    t_centre = start_time + window.k * dt
    action = integrator._action(window.estimate)
    moved = centre + length * window.velocity if action == "jump" else centre
    target, other = truth(t_centre + length)
    floor = float(w2(target, other))
    result = {"t_centre": t_centre, "H": length, "k": window.k, "action": action, "floor": floor,
              "lot": float(w2(moved, target)) / floor, "standing_still": float(w2(centre, target)) / floor,
              "speed": float(window.velocity.pow(2).sum(-1).mean().sqrt())}
    if window.estimate is not None:
        result["standard_error"] = window.estimate.standard_error
    if oracle_velocity is not None:
        exact = oracle_velocity(centre, t_centre)
        result["oracle"] = float(w2(centre + length * exact, target)) / floor
        result["velocity_error"] = float((window.velocity - exact).pow(2).sum(-1).mean().sqrt())
        result["oracle_speed"] = float(exact.pow(2).sum(-1).mean().sqrt())
    if paper and integrator.method != "particle":
        k = integrator.k
        paper_window = window.snapshots[:2 * k + 1]
        velocity = lot_velocity(paper_window, dt, k, method=integrator.method, estimator="centred-average")
        t_paper = start_time + k * dt
        paper_target, paper_other = truth(t_paper + length)
        paper_floor = float(w2(paper_target, paper_other))
        result.update(t_centre_paper=t_paper,
                      paper=float(w2(paper_window[k] + length * velocity, paper_target)) / paper_floor,
                      paper_standing_still=float(w2(paper_window[k], paper_target)) / paper_floor)
        if oracle_velocity is not None:
            exact = oracle_velocity(paper_window[k], t_paper)
            result["paper_velocity_error"] = float((velocity - exact).pow(2).sum(-1).mean().sqrt())
            result["paper_oracle"] = float(w2(paper_window[k] + length * exact, paper_target)) / paper_floor
    return result
