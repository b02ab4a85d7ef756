r"""Linearized optimal transport (LOT) velocities and projective integration of particle systems.

The bulk law of a particle system moves with a velocity field :math:`v_t` that can be read off
optimal transport maps between snapshots, even when each particle moves erratically:

- :func:`lot_velocity`: the average of ``k`` centred differences of transport maps from the
  central snapshot (LOT paper, section 5.2),
  :math:`v(x_i) = \frac1k \sum_{j=1}^k \frac{T^{+j}(x_i) - T^{-j}(x_i)}{2 j h}`.
- :func:`particle_velocity`: the same average without transport (the particle-wise baseline of
  section 6.2): each particle's own centred differences.
- :func:`lot_embedding` and :func:`pca`: maps :math:`T_\sigma^{\mu}` from a fixed reference cloud,
  flattened, and their principal components (the trajectory picture of Fig. 6.6).
- :class:`ProjectiveIntegrator`: start-up ``S``; ``N_T`` cycles of (``2k+1`` micro snapshots, LOT
  velocity at the central one, Euler step :math:`x \mapsto x + H v(x)`, re-initialization of
  hidden per-particle state, burn-in ``H_R``); final recovery ``R`` (section 5.3). It records every
  stage, counts micro steps against a plain run, and compares with a control run in :math:`W_2`.

Micro-simulators follow a small protocol (:class:`MicroSimulator`): ``dt`` (micro step ``h``),
``state`` (read and assign; may carry hidden per-particle variables), ``step(n)``,
``positions() -> (N, d)`` and ``set_positions((N, d))``. :class:`SystemSimulator` adapts any
registered :mod:`torchmf.systems` system.

Shapes: snapshots ``(2k+1, N, d)``; velocities ``(N, d)``; recorded runs ``(L, N, d)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from ._validation import check_int, check_nonnegative, check_points, check_positive, check_tensor
from .metrics import w2
from .sde import make_generator
from .transport import METHODS, TransportSolver, resolve_method

__all__ = ["lot_velocity", "particle_velocity", "lot_embedding", "pca", "MicroSimulator", "SystemSimulator",
           "check_simulator", "KeepHiddenState", "SystemReinitialization", "AdaptiveStep", "ProjectiveIntegrator",
           "ProjectiveRun", "lot_method", "w2_distance", "extrapolate"]

_PROTOCOL = ("dt", "state", "step", "positions", "set_positions")


def lot_method(method: str, n: int, dim: int, weighted: bool = False) -> str:
    """The transport backend LOT uses for ``method``: ``"auto"`` means sorting in 1-D, the exact
    assignment up to ``n = 30,000`` (the certified sparse assignment; 3,000 for frames of unequal
    counts, by POT's network simplex) and the converged Sinkhorn beyond
    (:func:`torchmf.transport.resolve_method`). Measured on untracked clouds moved by known gradient
    fields (N = 1,000, scripts/bench_transport.py): exact maps 0.03% off the true velocity, converged
    Sinkhorn maps at the default blur 3.6% (the blur smooths the map), and the assignment is the
    faster of the two at these sizes."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, but got {method!r}")
    if method != "auto":
        return method
    return resolve_method("auto", n, dim, weighted=weighted)


def _check_window(snapshots, k):
    snapshots = check_points("snapshots", snapshots)
    if snapshots.ndim != 3:
        raise ValueError(f"snapshots: expected shape (2k+1, N, d), but got {tuple(snapshots.shape)}")
    return snapshots, _half_width(snapshots.shape[0], k)


def _half_width(count, k):
    """``k`` of a window of ``count = 2k+1`` snapshots (checked, or read off when ``None``)."""
    if k is None:
        if count < 3 or count % 2 == 0:
            raise ValueError(f"snapshots: expected an odd number >= 3 of snapshots (2k+1), but got {count}")
        k = (count - 1) // 2
    k = check_int("k", k, minimum=1)
    if count != 2 * k + 1:
        raise ValueError(f"k: k = {k} needs 2k+1 = {2 * k + 1} snapshots, but got {count} snapshots")
    return k


def _cloud_window(snapshots, k, mask):
    """A window of clouds with different particle counts: ``([(N_j, d)] * (2k+1), k)`` from a
    sequence of clouds, or from ``snapshots (2k+1, N, d)`` and ``mask (2k+1, N)`` (True = observed;
    the other entries, NaN or not, are left out)."""
    if isinstance(snapshots, (list, tuple)):
        if mask is not None:
            raise ValueError("mask: a sequence of clouds already has its own counts; pass either a sequence of "
                             "(N_j, d) clouds or a (2k+1, N, d) tensor with a mask, but got both")
        clouds = [check_points(f"snapshots[{j}]", cloud) for j, cloud in enumerate(snapshots)]
    else:
        snapshots = check_tensor("snapshots", snapshots, ndim=3, finite=False)
        mask = torch.as_tensor(mask, device=snapshots.device)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(snapshots.shape[:2]):
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(snapshots.shape[:2])} (snapshots "
                             f"without d), but got {mask.dtype} {tuple(mask.shape)}")
        clouds = [check_points(f"snapshots[{j}][mask[{j}]]", frame[observed])
                  for j, (frame, observed) in enumerate(zip(snapshots, mask))]
    first = clouds[0]
    for j, cloud in enumerate(clouds):
        if cloud.shape[-1] != first.shape[-1] or cloud.ndim != 2 or cloud.dtype != first.dtype \
                or cloud.device != first.device:
            raise ValueError(f"snapshots[{j}]: expected an (N_j, {first.shape[-1]}) cloud of dtype {first.dtype} "
                             f"on {first.device} like snapshots[0], but got {tuple(cloud.shape)} {cloud.dtype} "
                             f"{cloud.device}")
    return clouds, _half_width(len(clouds), k)


def lot_velocity(snapshots: torch.Tensor, dt: float, k: Optional[int] = None, method: str = "auto",
                 blur: Optional[float] = None, solver: Optional[TransportSolver] = None,
                 return_second_derivative: bool = False, mask: Optional[torch.Tensor] = None):
    r"""LOT velocity at the central snapshot: the average of ``k`` centred differences.

    Snapshots with missing particles (``mask``, or a sequence of clouds of different sizes) are
    used as they are: every frame is the uniform measure on its observed particles, and the maps
    go from the central frame's observed particles to each frame's (transport between clouds of
    unequal size, :func:`torchmf.transport.transport_map`). These solves start cold: a warm start
    needs the same particle labels in consecutive frames.

    Arguments:
        snapshots: ``(2k+1, N, d)`` clouds at times :math:`t_0 - kh, \dots, t_0 + kh`, or a
            sequence of ``2k+1`` clouds ``(N_j, d)`` of any sizes.
        dt: the spacing ``h`` between snapshots.
        k: half-width (default ``(L-1)/2``).
        method: transport backend (see :func:`lot_method`; any :data:`torchmf.transport.METHODS`).
        blur: Sinkhorn blur (default: the transport module's).
        solver: a :class:`~torchmf.transport.TransportSolver` to reuse (overrides method/blur).
        return_second_derivative: also return the least-squares second derivative of the LOT
            curve :math:`s \mapsto T^{\mu_{t_0+s}}_{\mu_{t_0}}` at :math:`s = 0`, ``(N, d)``.
        mask: ``(2k+1, N)`` bool, True where a particle was observed (e.g. a window of
            :attr:`torchmf.Trajectories.mask`); the other entries of ``snapshots`` may be NaN.

    Returns:
        velocity ``(N, d)`` at the particles of ``snapshots[k]`` (and the second derivative); with
        missing particles ``(N_k, d)`` at the observed particles of the central frame, in their
        order (``snapshots[k][mask[k]]``).
    """
    if mask is not None or isinstance(snapshots, (list, tuple)):
        snapshots, k = _cloud_window(snapshots, k, mask)
        warm = False
    else:
        snapshots, k = _check_window(snapshots, k)
        warm = True
    dt = check_positive("dt", dt)
    centre = snapshots[k]
    if solver is None:
        # the self-transport debiasing cancels in a difference of maps from one source
        sizes = {cloud.shape[0] for cloud in snapshots}
        solver = TransportSolver(lot_method(method, max(sizes), centre.shape[1], weighted=len(sizes) > 1),
                                 blur=blur, debias=False)
    solver.reset()
    maps = {}
    for j in list(range(-k, 0)) + list(range(1, k + 1)):  # consecutive targets: warm starts help
        maps[j] = solver(centre, snapshots[k + j], warm_start=warm)
    velocity = sum((maps[j] - maps[-j]) / (2 * j * dt) for j in range(1, k + 1)) / k
    if not return_second_derivative:
        return velocity
    lags = [j * dt for j in range(1, k + 1)]
    even = [0.5 * (maps[j] + maps[-j]) - centre for j in range(1, k + 1)]
    # even part of the curve: e_j = a s_j^2 / 2, least squares over j
    second = 2 * sum(s ** 2 * e for s, e in zip(lags, even)) / sum(s ** 4 for s in lags)
    return velocity, second


def extrapolate(snapshots, dt: Optional[float] = None, horizon=1.0, k: Optional[int] = None, order: int = 1,
                method: str = "auto", blur: Optional[float] = None) -> torch.Tensor:
    r"""Extrapolate recorded snapshots beyond the last one with the LOT velocity (no simulator needed).

    The window is the last ``2k+1`` snapshots (default: the largest odd number available); the LOT
    velocity :math:`v` (and for ``order=2`` the second derivative :math:`a`) of the bulk law at the
    window's centre :math:`t_c` moves the central cloud to :math:`t = t_{last} + H`:
    :math:`x + s v(x)` (``order=1``, the projective Euler step) or :math:`x + s v + \tfrac{s^2}{2} a`
    (``order=2``), with :math:`s = t - t_c = k\,dt + H`. Particles need not be tracked (each snapshot
    is only a cloud), and frames may hold different numbers of particles: a
    :class:`~torchmf.particles.Trajectories` with a ``mask`` (lost particles, varying counts) is
    used frame by frame on its observed particles (see :func:`lot_velocity`), and the forecast is
    the central frame's observed particles moved, ``(N_c, d)``.

    Arguments:
        snapshots: ``(L, N, d)`` tensor/array or a :class:`~torchmf.particles.Trajectories` with one
            experiment (then ``dt`` defaults to its uniform time spacing; a mask is honoured).
        dt: spacing of the snapshots.
        horizon: time beyond the last snapshot, a number or a sequence of ``H`` numbers.
        k: half-width of the window (default ``(L - 1) // 2``).
        order: 1 (Euler, LOT paper) or 2 (adds the curvature term).
        method, blur: transport backend, see :func:`lot_velocity`.

    Returns:
        ``(N, d)`` for one horizon, ``(H, N, d)`` for a sequence (``N_c`` instead of ``N`` with a mask:
        the observed particles of the window's central frame).
    """
    from .particles import Trajectories

    mask = None
    if isinstance(snapshots, Trajectories):
        if snapshots.n_experiments != 1:
            raise ValueError(f"snapshots: expected one experiment, but got M = {snapshots.n_experiments}; "
                             f"pass trajectories.positions[m] with dt")
        steps = snapshots.times.diff()
        if dt is None:
            if steps.numel() == 0 or float((steps - steps.mean()).abs().max()) > 1e-6 * float(steps.mean()):
                raise ValueError("dt: the snapshots' times are not uniformly spaced; pass dt and a uniform window")
            dt = float(steps.mean())
        mask = None if snapshots.mask is None else snapshots.mask[0]
        snapshots = snapshots.positions[0]
    if not isinstance(snapshots, torch.Tensor):
        snapshots = torch.as_tensor(snapshots)
    if dt is None:
        raise ValueError("dt: expected the snapshot spacing (a positive number) for tensor snapshots, but got None")
    if mask is None:
        snapshots = check_points("snapshots", snapshots)
    if snapshots.ndim != 3:
        raise ValueError(f"snapshots: expected shape (L, N, d), but got {tuple(snapshots.shape)}")
    if k is None:
        k = (snapshots.shape[0] - 1) // 2
    k = check_int("k", k, minimum=1)
    if 2 * k + 1 > snapshots.shape[0]:
        raise ValueError(f"k: a window of 2k+1 = {2 * k + 1} snapshots needs that many, but got {snapshots.shape[0]}")
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, but got {order!r}")
    horizons = [float(h) for h in (horizon if isinstance(horizon, (list, tuple)) else [horizon])]
    for value in horizons:
        check_nonnegative("horizon", value)
    window = snapshots[-(2 * k + 1):]
    window_mask = None if mask is None else mask[-(2 * k + 1):]
    result = lot_velocity(window, dt, k=k, method=method, blur=blur, return_second_derivative=order == 2,
                          mask=window_mask)
    velocity, second = (result, None) if order == 1 else result
    centre = window[k] if window_mask is None else window[k][window_mask[k]]
    clouds = []
    for value in horizons:
        lag = k * dt + value
        cloud = centre + lag * velocity
        clouds.append(cloud if second is None else cloud + 0.5 * lag ** 2 * second)
    return clouds[0] if not isinstance(horizon, (list, tuple)) else torch.stack(clouds)


def particle_velocity(snapshots: torch.Tensor, dt: float, k: Optional[int] = None) -> torch.Tensor:
    r"""Particle-wise baseline (section 6.2): :math:`\frac1k\sum_j (x_i(t_0+jh) - x_i(t_0-jh))/(2jh)`,
    ``(2k+1, N, d) -> (N, d)``; no relabelling, so only meaningful for tracked particles."""
    snapshots, k = _check_window(snapshots, k)
    dt = check_positive("dt", dt)
    return sum((snapshots[k + j] - snapshots[k - j]) / (2 * j * dt) for j in range(1, k + 1)) / k


def lot_embedding(measures: torch.Tensor, reference: torch.Tensor, method: str = "auto",
                  blur: Optional[float] = None) -> torch.Tensor:
    r"""LOT embedding :math:`\mu \mapsto T_\sigma^\mu - \mathrm{id}` against one reference cloud.

    Arguments:
        measures: ``(L, N, d)`` clouds (each uniform on N points).
        reference: ``(N, d)`` reference cloud :math:`\sigma`.

    Returns:
        ``(L, N * d)``: the flattened displacements, one row per measure.
    """
    measures = check_points("measures", measures)
    if measures.ndim != 3:
        raise ValueError(f"measures: expected shape (L, N, d), but got {tuple(measures.shape)}")
    reference = check_points("reference", reference, measures.shape[-1])
    if reference.ndim != 2 or reference.shape[0] != measures.shape[1]:
        raise ValueError(f"reference: expected shape ({measures.shape[1]}, {measures.shape[2]}), "
                         f"but got {tuple(reference.shape)}")
    solver = TransportSolver(lot_method(method, reference.shape[0], reference.shape[1]), blur=blur, debias=False)
    return torch.stack([(solver(reference, cloud) - reference).reshape(-1) for cloud in measures])


def pca(vectors: torch.Tensor, components: int = 2, basis: Optional[torch.Tensor] = None):
    """Principal components of the rows of ``vectors (L, D)``.

    Returns ``(scores (L, components), basis (components, D), mean (D,), explained (components,))``;
    pass ``basis=(basis, mean)`` to project other rows on a basis computed before.
    """
    vectors = check_tensor("vectors", vectors, ndim=2)
    if basis is not None:
        axes, mean = basis
        return (vectors - mean) @ axes.T
    components = check_int("components", components, minimum=1)
    if components > min(vectors.shape):
        raise ValueError(f"components: expected at most {min(vectors.shape)} for shape {tuple(vectors.shape)}, "
                         f"but got {components}")
    mean = vectors.mean(0)
    _, singular, right = torch.linalg.svd(vectors - mean, full_matrices=False)
    explained = singular[:components] ** 2 / (singular ** 2).sum().clamp_min(1e-30)
    axes = right[:components]
    return (vectors - mean) @ axes.T, axes, mean, explained


# -- micro-simulators ---------------------------------------------------------------------------------
class MicroSimulator:
    """Protocol of the micro-simulators driven by :class:`ProjectiveIntegrator` (duck-typed).

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


@dataclass
class AdaptiveStep:
    r"""Adaptive large step from the local error bound of Theorem 4.16,
    :math:`W_2 \le \tfrac{H^2}{2} M`: :math:`H = \sqrt{2\,\text{tolerance}/\hat M}`, clipped to
    ``[min_step, max_step]`` and to ``growth`` times the previous step. :math:`\hat M` is the
    change of the LOT speed :math:`\|v\|_{L^2(\mu)}` between consecutive large steps per unit
    time, or before the second step, the RMS of the window's second-derivative estimate."""

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
    ``large_steps`` (one dict per Euler step: ``t0``, ``H``, ``speed``, ``curvature``),
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
        method: transport backend for the velocity (:func:`lot_method`), or ``"particle"`` for
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
    """

    def __init__(self, k: int = 80, step: float = 85.0, burn_in: float = 30.0, start_up: float = 30.0,
                 n_steps: int = 16, recovery: float = 50.0, method: str = "auto", blur: Optional[float] = None,
                 reinit=None, adaptive: Optional[AdaptiveStep] = None, t_end: Optional[float] = None,
                 record_every: Optional[int] = None, progress: bool = True):
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
        """Run the protocol on ``simulator`` (a :class:`MicroSimulator`); returns a :class:`ProjectiveRun`."""
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
            window, centre_state = self._sample_window(simulator, recorder, clock)
            centre_clock = clock + self.k
            velocity, curvature = self._velocity(window, dt)
            speed = float(velocity.pow(2).sum(-1).mean().sqrt())
            if self.adaptive is not None:
                step_count = self._adaptive_steps(plan, large_steps, step_count, speed, curvature, centre_clock, dt)
            step_length = step_count * dt
            predicted = window[self.k] + step_length * velocity
            if not bool(torch.isfinite(predicted).all()):
                raise ValueError(f"H: the large step at t = {centre_clock * dt:g} produced NaN/inf positions")
            self.reinit(simulator, centre_state, predicted, step_length)
            clock = centre_clock + step_count
            if hasattr(simulator, "time"):
                simulator.time = clock * dt
            recorder.record(clock, "euler")
            clock = recorder.micro(clock, plan["burn_in"], "burn-in")
            large_steps.append({"t0": centre_clock * dt, "H": step_length, "speed": speed, "curvature": curvature})
            cycle_micro += 2 * self.k + plan["burn_in"]
            cycle_length += self.k + step_count + plan["burn_in"]
            bar.update(1)
        bar.close()
        # fixed mode: exactly R; adaptive mode: whatever is left to t_end (R, or more if cycles stopped early)
        clock = recorder.micro(clock, max(0, plan["t_end"] - clock), "recovery")
        return ProjectiveRun(recorder.times_tensor(), torch.stack(recorder.positions), recorder.stages,
                             recorder.micro_steps, clock, dt, large_steps, cycle_micro, cycle_length)

    def _sample_window(self, simulator, recorder, clock):
        """2k micro steps from ``clock``: the snapshots ``(2k+1, N, d)`` and a copy of the central state."""
        window, centre_state = [simulator.positions().clone()], None
        for j in range(1, 2 * self.k + 1):
            simulator.step(1)
            window.append(simulator.positions().clone())
            if j == self.k:
                centre_state = _copy_state(simulator.state)
                recorder.record(clock + j, "centre")
            elif self.record_every and j % self.record_every == 0:
                recorder.record(clock + j, "window")
        recorder.count(2 * self.k)
        sizes = {tuple(cloud.shape) for cloud in window}
        if len(sizes) > 1:
            # the Euler step re-initialises the simulator's own particles: a changing set has no meaning here
            raise ValueError(f"simulator: positions() changed shape within a window ({sorted(sizes)}); the projective "
                             f"integrator moves a fixed set of particles -- for recorded frames with lost particles "
                             f"use torchmf.lot.extrapolate(trajectories) or lot_velocity(..., mask=)")
        return torch.stack(window), centre_state

    def _velocity(self, window, dt):
        if self.method == "particle":
            return particle_velocity(window, dt, self.k), float("nan")
        velocity, second = lot_velocity(window, dt, self.k, method=self.method, blur=self.blur,
                                        return_second_derivative=True)
        return velocity, float(second.pow(2).sum(-1).mean().sqrt())

    def _adaptive_steps(self, plan, large_steps, previous_steps, speed, curvature, centre_clock, dt):
        if large_steps:
            last = large_steps[-1]
            elapsed = centre_clock * dt - last["t0"]
            curvature = abs(speed - last["speed"]) / elapsed
        length = self.adaptive.next_step(previous_steps * dt, curvature) if large_steps else self.step
        steps = min(max(int(round(length / dt)), plan["min_step"]), plan["max_step"])
        # never step past the final recovery; stretch the last step rather than leave a sliver
        room = plan["t_end"] - plan["recovery"] - (centre_clock - self.k) - self.k - plan["burn_in"]
        if room - steps < self.k + plan["min_step"] + plan["burn_in"]:
            steps = room
        return max(steps, self.k + 1)

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

    def times_tensor(self):
        return torch.tensor(self.times, dtype=torch.float64) * self.dt


def _copy_state(state):
    """A detached copy of a simulator state (tensors cloned, containers copied)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    return copy.deepcopy(state)
