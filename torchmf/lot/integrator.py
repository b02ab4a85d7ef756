r"""LOT projective integration (section 5.3): the adaptive step rule, the recorded run, and the
integrator.

:class:`ProjectiveIntegrator`: start-up ``S``; ``N_T`` cycles of (``2k+1`` micro snapshots, LOT
velocity at the central one, Euler step :math:`x \mapsto x + H v(x)`, re-initialization of hidden
per-particle state, burn-in ``H_R``); final recovery ``R``. :class:`ProjectiveRun` records every
stage and counts micro steps against a plain run; :func:`w2_distance` compares with a control run.

Shapes: snapshots ``(2k+1, N, d)``; velocities ``(N, d)``; recorded runs ``(L, N, d)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from .._validation import check_int, check_nonnegative, check_points, check_positive
from ..metrics import w2
from .simulators import _reinit_policy, check_simulator
from .estimate import ERROR_ESTIMATES, VelocityEstimate
from .velocity import ESTIMATORS, lot_method
from .window import sample_window

#: what the integrator does when the velocity is inside its noise
INSIGNIFICANT = ("hold", "simulate", "jump")


@dataclass
class AdaptiveStep:
    r"""Adaptive large step from the local error bound of Theorem 4.16,
    :math:`W_2 \le \tfrac{H^2}{2} M`: :math:`H = \sqrt{2\,\text{tolerance}/\hat M}`, clipped to
    ``[min_step, max_step]`` and to ``growth`` times the previous step. :math:`\hat M` is the
    change of the LOT speed :math:`\|v\|_{L^2(\mu)}` between consecutive large steps per unit
    time, or before the second step, the RMS of the window's second-derivative estimate. A step that
    applies a velocity is also capped at ``error_fraction * floor / standard_error`` of the
    integrator (its noise may not carry it past the sampling floor), and a held step (velocity inside
    its noise) at ``error_fraction * floor / max(speed, standard_error)``."""

    tolerance: float
    min_step: float
    max_step: float
    growth: float = 2.0

    def __post_init__(self):
        self.tolerance = check_positive("tolerance", self.tolerance)
        self.min_step = check_positive("min_step", self.min_step)
        self.max_step = check_positive("max_step", self.max_step)
        self.growth = check_positive("growth", self.growth)
        if self.max_step < self.min_step:
            raise ValueError(f"max_step: expected >= min_step = {self.min_step}, but got {self.max_step}")

    def next_step(self, previous: float, curvature: float) -> float:
        ideal = math.sqrt(2 * self.tolerance / curvature) if curvature > 0 else self.max_step
        return min(max(ideal, self.min_step), self.max_step, self.growth * previous)


# -- the integrator ---------------------------------------------------------------------------------------
@dataclass
class ProjectiveRun:
    """Everything a :class:`ProjectiveIntegrator` run recorded.

    ``times (L,)`` and ``positions (L, N, d)`` at every recorded stage, ``stages`` (one label per
    record: ``initial``, ``micro``, ``start-up``, ``window``, ``centre``, ``euler``, ``burn-in``,
    ``recovery``), ``micro_steps`` taken, ``control_steps`` a plain run needs for the same time,
    ``large_steps`` (one dict per large step: ``t0`` (the window's centre), ``H``, ``k`` (the half
    window used), ``speed``, ``curvature``, ``action`` (``jump``, ``hold`` or ``simulate``) and, for the
    regression estimator, ``standard_error``, ``relative_error``, ``bandwidth``, ``floor_estimate``,
    ``predicted_displacement`` (H x speed), ``predicted_velocity_error`` (H x standard error) and
    ``predicted_w2_gain`` over standing still),
    ``dt``, ``cycle_micro_steps`` / ``cycle_steps_equivalent`` (per cycle, for the cycle ratio).
    """

    times: torch.Tensor
    positions: torch.Tensor
    stages: List[str]
    micro_steps: int
    control_steps: int
    dt: float
    large_steps: List[dict] = field(default_factory=list)
    cycle_micro_steps: int = 0
    cycle_steps_equivalent: int = 0

    @property
    def micro_step_ratio(self) -> float:
        """Micro steps taken over those of a plain run to the same end time (start-up and recovery included)."""
        return self.micro_steps / self.control_steps

    @property
    def cycle_ratio(self) -> float:
        """Micro steps per cycle over the cycle's length in micro steps (the paper's 1/3 for Table 6.1)."""
        return self.cycle_micro_steps / max(1, self.cycle_steps_equivalent)

    def w2_to(self, control: torch.Tensor, method: str = "auto") -> torch.Tensor:
        """``(L,)`` W2 between every record and ``control (L, N, d)`` at the same times (:func:`w2_distance`)."""
        control = check_points("control", control, self.positions.shape[-1])
        if control.shape[0] != self.positions.shape[0]:
            raise ValueError(f"control: expected {self.positions.shape[0]} records like the run, "
                             f"but got {control.shape[0]}")
        return torch.stack([w2_distance(a, b, method) for a, b in zip(self.positions, control.to(self.positions))])


def w2_distance(x: torch.Tensor, y: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """W2 between uniform clouds ``(N, d)``: :func:`torchmf.metrics.w2` (sort in 1-D, the exact
    assignment up to N = 30,000, the transport cost of a converged Sinkhorn plan beyond).

    It used to take the length of a debiased multiscale Sinkhorn map at 1% blur above N = 1,000:
    33% above to 13% below the exact W2 on N = 2,000 pairs (issue 12, item 6)."""
    return w2(x, y, method=method)


class ProjectiveIntegrator:
    r"""LOT projective integration (section 5.3).

    Arguments (times in the simulator's units; each must be a whole number of micro steps ``h``):
        k: centred differences averaged (``2k+1`` micro snapshots per cycle); ``k >= 1``.
        step: large step ``H`` (``H > k h``); the first step when ``adaptive`` is given.
        burn_in: ``H_R`` micro time after each large step.
        start_up: ``S`` micro time before the first cycle.
        n_steps: ``N_T`` large steps (the most, when adaptive).
        recovery: ``R`` micro time after the last cycle.
        method: transport backend for the velocity (:func:`~torchmf.lot.lot_method`), or ``"particle"`` for
            the particle-wise baseline of section 6.2.
        blur: Sinkhorn blur for the maps.
        reinit: hidden-state policy after each large step: None (keep the central state's hidden
            variables), ``"history-dependent"`` / ``"history-independent"`` (Table 7.4, delegated to
            the system), or a callable ``(simulator, centre_state, positions (N, d), H) -> None``.
        adaptive: an :class:`AdaptiveStep`; then ``t_end`` is required and the cycles stop when
            the next would pass ``t_end - R``.
        t_end: final time for the adaptive mode (fixed mode: ``S + N_T (k h + H + H_R) + R``).
        record_every: also record every this many micro steps inside micro segments (None: stage ends only).
        progress: progress bar over cycles.
        estimator: the velocity (:func:`~torchmf.lot.lot_velocity`): ``"regression"`` (default, with
            its error bar) or ``"centred-average"`` (section 5.2 verbatim; no error bar, always jumps).
        max_k: the half window may double (more micro steps, the centre moving forward) up to this
            while the step's predicted velocity error ``H * standard_error`` exceeds
            ``error_fraction`` times the sampling floor estimated from the central cloud
            (:func:`sampling_floor`); default ``4 k``; ``max_k = k`` keeps the paper's window.
        error_fraction: see ``max_k``.
        insignificant: when the speed is within twice its standard error even at ``max_k``:
            ``"hold"`` (default) takes the large step with zero velocity (the law is not seen to move:
            the error is at most about ``2 H standard_error``), ``"simulate"`` runs the step as plain
            micro steps (exact, costs them), ``"jump"`` applies the noisy velocity anyway.
        lags, smoothing: of the regression estimator (:func:`~torchmf.lot.lot_velocity`).
        error: how the regression's standard error is estimated (:mod:`torchmf.lot.estimate`, items
            4-5): ``"noise-copy"`` (default here: every figure of the one-step and adaptive tests was
            measured with it, and it is calibrated where increments are independent, e.g. box
            diffusion), or ``"max"`` with the split-half check (about 1.5x the transport cost in 2-D)
            for systems whose particles move persistently (chemotaxis: the noise copy is 2.5x small).
    """

    def __init__(self, k: int = 80, step: float = 85.0, burn_in: float = 30.0, start_up: float = 30.0,
                 n_steps: int = 16, recovery: float = 50.0, method: str = "auto", blur: Optional[float] = None,
                 reinit=None, adaptive: Optional[AdaptiveStep] = None, t_end: Optional[float] = None,
                 record_every: Optional[int] = None, progress: bool = True, estimator: str = "regression",
                 max_k: Optional[int] = None, error_fraction: float = 0.5, insignificant: str = "hold",
                 lags: int = 10, smoothing="auto", error: str = "noise-copy"):
        self.k = check_int("k", k, minimum=1)
        self.step = check_positive("H", step)
        self.burn_in = check_nonnegative("burn_in", burn_in)
        self.start_up = check_nonnegative("start_up", start_up)
        self.n_steps = check_int("n_steps", n_steps, minimum=1)
        self.recovery = check_nonnegative("recovery", recovery)
        if method != "particle":
            lot_method(method, 2, 2)
        self.method, self.blur = method, blur
        self.reinit = _reinit_policy(reinit)
        if adaptive is not None and not isinstance(adaptive, AdaptiveStep):
            raise TypeError(f"adaptive: expected an AdaptiveStep or None, but got {type(adaptive).__name__}")
        self.adaptive = adaptive
        if adaptive is not None and t_end is None:
            raise ValueError("t_end: the adaptive mode needs a final time, but got None")
        self.t_end = None if t_end is None else check_positive("t_end", t_end)
        self.record_every = None if record_every is None else check_int("record_every", record_every, minimum=1)
        self.progress = progress
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {list(ESTIMATORS)}, but got {estimator!r}")
        self.estimator = estimator
        self.max_k = 4 * self.k if max_k is None else check_int("max_k", max_k, minimum=self.k)
        self.error_fraction = check_positive("error_fraction", error_fraction)
        if insignificant not in INSIGNIFICANT:
            raise ValueError(f"insignificant: expected one of {list(INSIGNIFICANT)}, but got {insignificant!r}")
        self.insignificant = insignificant
        self.lags = check_int("lags", lags, minimum=1)
        self.smoothing = smoothing
        if error not in ERROR_ESTIMATES:
            raise ValueError(f"error: expected one of {list(ERROR_ESTIMATES)}, but got {error!r}")
        self.error = error

    # -- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _steps(name, length, dt):
        count = length / dt
        if abs(count - round(count)) > 1e-6 * max(1.0, count):
            raise ValueError(f"{name}: expected a whole number of micro steps h = {dt:g}, but got {length:g} "
                             f"({count:g} steps)")
        return int(round(count))

    def plan(self, dt: float) -> dict:
        """Micro-step counts of the protocol for micro step ``dt`` (checks that H > k h)."""
        dt = check_positive("dt", dt)
        counts = {"start_up": self._steps("start_up", self.start_up, dt),
                  "step": self._steps("H", self.step, dt),
                  "burn_in": self._steps("burn_in", self.burn_in, dt),
                  "recovery": self._steps("recovery", self.recovery, dt)}
        if counts["step"] <= self.k:
            raise ValueError(f"H: expected a large step longer than the half window k h = {self.k * dt:g}, "
                             f"but got {self.step:g}")
        if self.adaptive is not None:
            counts["min_step"] = max(self.k + 1, self._steps_floor(self.adaptive.min_step, dt))
            counts["max_step"] = self._steps_floor(self.adaptive.max_step, dt)
            counts["t_end"] = self._steps("t_end", self.t_end, dt)
        else:
            counts["t_end"] = counts["start_up"] + self.n_steps * (self.k + counts["step"] + counts["burn_in"]) \
                + counts["recovery"]
        return counts

    @staticmethod
    def _steps_floor(length, dt):
        return max(1, int(math.floor(length / dt + 1e-9)))

    def end_time(self, dt: float) -> float:
        return self.plan(dt)["t_end"] * dt

    # -- runs -------------------------------------------------------------------------------------------------
    def run(self, simulator) -> ProjectiveRun:
        """Run the protocol on ``simulator`` (a :class:`~torchmf.lot.MicroSimulator`); returns a
        :class:`ProjectiveRun`."""
        check_simulator(simulator)
        dt = float(simulator.dt)
        plan = self.plan(dt)
        recorder = _Recorder(simulator, dt, self.record_every)
        recorder.record(0, "initial")
        clock = recorder.micro(0, plan["start_up"], "start-up")
        large_steps, step_count = [], plan["step"]
        cycle_micro = cycle_length = 0
        bar = tqdm(total=self.n_steps, disable=not self.progress, desc="LOT projective", leave=False)
        for _ in range(self.n_steps):
            if self.adaptive is not None:
                remaining = plan["t_end"] - plan["recovery"] - clock
                if remaining < self.k + plan["min_step"] + plan["burn_in"]:
                    break
            room = None if self.adaptive is None else plan["t_end"] - plan["recovery"] - plan["burn_in"] - clock
            window = sample_window(self, simulator, recorder, clock, dt, step_count * dt, room)
            centre_clock = clock + window.k
            speed = float(window.velocity.pow(2).sum(-1).mean().sqrt())
            if self.adaptive is not None:
                step_count = self._adaptive_steps(plan, large_steps, step_count, speed, window, centre_clock, dt)
            step_count = max(step_count, window.k + 1)
            step_length = step_count * dt
            action = self._action(window.estimate)
            if action == "simulate":
                recorder.micro(centre_clock + window.k, step_count - window.k, "simulated")
            else:
                velocity = window.velocity if action == "jump" else torch.zeros_like(window.velocity)
                predicted = window.snapshots[window.k] + step_length * velocity
                if not bool(torch.isfinite(predicted).all()):
                    raise ValueError(f"H: the large step at t = {centre_clock * dt:g} produced NaN/inf positions")
                self.reinit(simulator, window.centre_state, predicted, step_length)
            clock = centre_clock + step_count
            if hasattr(simulator, "time"):
                simulator.time = clock * dt
            recorder.record(clock, "euler")
            clock = recorder.micro(clock, plan["burn_in"], "burn-in")
            large_steps.append(self._diagnostics(centre_clock * dt, step_length, speed, window, action))
            simulated = step_count - window.k if action == "simulate" else 0
            cycle_micro += 2 * window.k + simulated + plan["burn_in"]
            cycle_length += window.k + step_count + plan["burn_in"]
            bar.update(1)
        bar.close()
        # fixed mode: exactly R; adaptive mode: whatever is left to t_end (R, or more if cycles stopped early)
        clock = recorder.micro(clock, max(0, plan["t_end"] - clock), "recovery")
        return ProjectiveRun(recorder.times_tensor(), torch.stack(recorder.positions), recorder.stages,
                             recorder.micro_steps, clock, dt, large_steps, cycle_micro, cycle_length)

    def _action(self, estimate: Optional[VelocityEstimate]) -> str:
        if estimate is None or estimate.significant:
            return "jump"
        return self.insignificant

    @staticmethod
    def _diagnostics(t0, step_length, speed, window, action):
        """One large step's record: where, how long, how fast, how sure, and what was done."""
        entry = {"t0": t0, "H": step_length, "speed": speed, "curvature": window.curvature, "k": window.k,
                 "action": action}
        if window.estimate is not None:
            error = window.estimate.standard_error
            entry.update(standard_error=error, relative_error=window.estimate.relative_error,
                         bandwidth=window.estimate.bandwidth, floor_estimate=window.floor,
                         predicted_displacement=step_length * speed,
                         predicted_velocity_error=step_length * error,
                         # moving by H v gains about H |v| on standing still and costs about H |error|
                         predicted_w2_gain=step_length * (speed - error) if action == "jump" else 0.0)
        return entry

    def _adaptive_steps(self, plan, large_steps, previous_steps, speed, window, centre_clock, dt):
        curvature = window.curvature
        if large_steps:
            last = large_steps[-1]
            elapsed = centre_clock * dt - last["t0"]
            curvature = abs(speed - last["speed"]) / elapsed
        length = self.adaptive.next_step(previous_steps * dt, curvature) if large_steps else self.step
        estimate = window.estimate
        if estimate is not None and window.floor == window.floor:
            # an applied velocity may not carry its own error past the floor; a held cloud may not stand still
            # longer than the (unresolved) speed, at least its standard error, allows
            risk = estimate.standard_error if estimate.significant else max(estimate.speed, estimate.standard_error)
            if risk > 0:
                length = min(length, self.error_fraction * window.floor / risk)
        steps = min(max(int(round(length / dt)), plan["min_step"]), plan["max_step"])
        # never step past the final recovery; stretch the last step rather than leave a sliver
        room = plan["t_end"] - plan["recovery"] - centre_clock - plan["burn_in"]
        if room - steps < self.k + plan["min_step"] + plan["burn_in"]:
            steps = room
        return max(steps, window.k + 1)

    def control(self, simulator, times: torch.Tensor, progress: Optional[bool] = None) -> torch.Tensor:
        """Plain micro run of ``simulator`` recorded at ``times (L,)`` (whole numbers of steps),
        ``-> (L, N, d)``; times must not decrease."""
        check_simulator(simulator)
        dt = float(simulator.dt)
        times = torch.as_tensor(times, dtype=torch.float64)
        counts = [self._steps("times", float(t), dt) for t in times]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise ValueError("times: expected non-decreasing recording times")
        out, clock = [], 0
        show = self.progress if progress is None else progress
        for target in tqdm(counts, disable=not show, desc="control", leave=False):
            simulator.step(target - clock)
            clock = target
            out.append(simulator.positions().clone())
        return torch.stack(out)


class _Recorder:
    def __init__(self, simulator, dt, every):
        self.simulator, self.dt, self.every = simulator, dt, every
        self.times, self.positions, self.stages = [], [], []
        self.micro_steps = 0

    def record(self, clock, stage):
        self.times.append(clock)
        self.positions.append(self.simulator.positions().clone())
        self.stages.append(stage)

    def count(self, steps):
        self.micro_steps += steps

    def micro(self, clock, steps, stage):
        """``steps`` micro steps from ``clock``, recording on the way and at the end."""
        done = 0
        while done < steps:
            chunk = min(self.every or steps, steps - done)
            self.simulator.step(chunk)
            done += chunk
            self.record(clock + done, stage if done == steps else "micro")
        self.count(steps)
        return clock + steps

    def insert(self, clock, positions, stage):
        """Record ``positions`` at ``clock`` in time order (the centre of a window is known at its end)."""
        index = len(self.times)
        while index > 0 and self.times[index - 1] > clock:
            index -= 1
        self.times.insert(index, clock)
        self.positions.insert(index, positions.clone())
        self.stages.insert(index, stage)

    def times_tensor(self):
        return torch.tensor(self.times, dtype=torch.float64) * self.dt
