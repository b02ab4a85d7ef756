r"""The nudged particle model: a base model corrected by the Wasserstein-gradient velocity.

:class:`NudgedSDE` steps the base model, then integrates the nudging flow :math:`\dot x = v(x)` over
the step (Lie splitting): explicit Euler sub-steps from the stability bound, or linearly implicit
sub-steps (:mod:`torchmf.nudging.implicit`) when that bound asks for many. The velocity itself is
:class:`~torchmf.nudging.velocity.TransportVelocity`. See :mod:`torchmf.nudging` for the method.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from .. import distributed
from .._validation import check_choice, check_int, check_nonnegative, check_points, check_positive
from ..data import Trajectories
from ..data.observations import GridObservations, ParticleObservations
from ..grid import Grid
from ..sde import simulate as simulate_sde
from .implicit import ImplicitStep
from .velocity import TransportVelocity, computation_grid

__all__ = ["NudgedSDE", "BACKENDS", "SCHEMES"]

BACKENDS = ("grid", "pairwise")
SCHEMES = ("auto", "explicit", "implicit")
#: explicit sub-steps per model step above which scheme="auto" switches to the implicit scheme (grid
#: backend) and an explicit run announces its cost before it goes on (lambda ~ 1e3 in the README example)
_EXPLICIT_LIMIT = 100


class NudgedSDE(nn.Module):
    """A base particle model corrected by the Wasserstein-gradient nudging velocity.

    Arguments:
        base_sde: the (biased) model: any object with ``step(t, x, dt, generator)`` acting on
            ``(M, N, D)`` (and, for ``torchsde.sdeint``, ``f(t, y)``/``g(t, y)`` on ``(M*N, D)``).
        observations: :class:`~torchmf.data.ParticleObservations` or :class:`~torchmf.data.GridObservations`.
        bandwidth: :math:`h > 0` of the Gaussian smoothing kernel.
        strength: :math:`\\lambda \\ge 0`.
        backend: ``"grid"`` (fast) or ``"pairwise"`` (exact).
        grid: computation grid of the grid backend (default: the observation grid for
            :class:`GridObservations`, else a free-space grid covering the snapshots widened by
            ``margin``); a periodic grid makes the kernel periodic (for both backends).
        grid_shape: nodes per dimension of the default grid (default 512 in 1-D, 256 in 2-D, 64 in 3-D).
        margin: widening of the default grid on each side (default ``max(6 h, 25%`` of the extent)).
        substeps: nudging sub-steps per model step (default None: automatic from the stability bound).
        stability: the bound's target :math:`dt_{sub} L` (default 1).
        scheme: how the nudging flow is integrated: ``"explicit"`` (Euler sub-steps from the
            stability bound, cost linear in :math:`\lambda`), ``"implicit"`` (grid backend: linearly
            implicit sub-steps, stable for any :math:`\lambda`, at most ``implicit_substeps`` per
            step) or ``"auto"`` (default: explicit while the bound asks for at most 100 sub-steps,
            implicit above, where the grid backend allows it; an explicit run above that bound
            warns with its estimated cost before it goes on).
        implicit_substeps: sub-steps per model step of the implicit scheme (default 4).
        observed_dims: the state coordinates the observations see (default all).
        n_experiments: ``M`` of torchsde's flattened ``(M*N, D)`` batches (default: the base's, else 1).
        sharded: the particles (forecast and observed) are this rank's share of an ensemble split
            over ``torch.distributed`` ranks; grid backend only (see the module docstring).
    """

    def __init__(self, base_sde, observations, bandwidth: float, strength: float, backend: str = "grid",
                 grid: Optional[Grid] = None, grid_shape=None, margin: Optional[float] = None,
                 substeps: Optional[int] = None, stability: float = 1.0,
                 observed_dims: Optional[Sequence[int]] = None, n_experiments: Optional[int] = None,
                 sharded: bool = False, scheme: str = "auto", implicit_substeps: int = 4):
        super().__init__()
        if not isinstance(sharded, bool):
            raise TypeError(f"sharded: expected a bool, but got {type(sharded).__name__}")
        if sharded and backend != "grid":
            raise ValueError(f"sharded: a sharded nudging velocity needs backend='grid' (the density grid is "
                             f"all-reduced), but got backend={backend!r}")
        self.sharded = sharded
        if not hasattr(base_sde, "step"):
            raise TypeError(f"base_sde: expected a model with step(t, x, dt, generator), but got {type(base_sde).__name__}")
        if not isinstance(observations, (ParticleObservations, GridObservations)):
            raise TypeError(f"observations: expected ParticleObservations or GridObservations, but got "
                            f"{type(observations).__name__}")
        self.base = base_sde
        self.observations = observations
        self.bandwidth = check_positive("bandwidth", bandwidth)
        self.strength = check_nonnegative("strength", strength)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.substeps = None if substeps is None else check_int("substeps", substeps, minimum=1)
        self.stability = check_positive("stability", stability)
        self.scheme = check_choice("scheme", scheme, SCHEMES)
        self.implicit_substeps = check_int("implicit_substeps", implicit_substeps, minimum=1)
        base_dim = getattr(base_sde, "dim", None)
        if observed_dims is None:
            observed_dims = list(range(base_dim if isinstance(base_dim, int) else observations.dim))
        observed_dims = [check_int("observed_dims", i, minimum=0) for i in observed_dims]
        if isinstance(base_dim, int) and any(i >= base_dim for i in observed_dims):
            raise ValueError(f"observed_dims: expected indices below the state dimension {base_dim}, but got {observed_dims}")
        if len(observed_dims) != observations.dim:
            raise ValueError(f"observations: dimension mismatch: the observations are {observations.dim}-D but the "
                             f"observed state coordinates {observed_dims} are {len(observed_dims)}-D")
        self.observed_dims = observed_dims
        self.dim = base_dim if isinstance(base_dim, int) else len(observed_dims)
        self.n_experiments = check_int("n_experiments", n_experiments if n_experiments is not None
                                       else getattr(base_sde, "n_experiments", 1), minimum=1)
        self.noise_type = getattr(base_sde, "noise_type", "diagonal")
        self.sde_type = getattr(base_sde, "sde_type", "ito")
        self.grid = computation_grid(observations, self.backend, self.bandwidth, grid, grid_shape, margin, sharded)
        if self.sharded and distributed.is_sharded():
            distributed.check_same("grid", (repr(self.grid), self.bandwidth, self.strength, self.observed_dims))
        self.transport = TransportVelocity(observations, self.bandwidth, self.backend, self.grid, sharded,
                                           grid_given=grid is not None)
        if self.scheme == "implicit" and (self.backend != "grid" or self.transport.field_of_view is not None):
            raise ValueError("scheme: 'implicit' needs backend='grid' without a field of view (it filters the "
                             f"misfit on the grid's spectrum), but got backend={self.backend!r}")
        self._implicit_possible = self.backend == "grid" and self.transport.field_of_view is None
        self._implicit = ImplicitStep(self.transport) if self._implicit_possible else None
        self._planned_steps: Optional[int] = None
        self._warned_cost = False
        self._warned_hold = False
        self.last_substeps = 0
        self.total_substeps = 0
        self.last_scheme = None

    def extra_repr(self) -> str:
        return (f"bandwidth={self.bandwidth:g}, strength={self.strength:g}, backend={self.backend!r}, "
                f"grid={self.grid!r}, substeps={self.substeps}, observed_dims={self.observed_dims}")

    def _observed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == len(self.observed_dims) and self.observed_dims == list(range(x.shape[-1])):
            return x
        return x[..., self.observed_dims]

    def _velocity(self, t: float, points: torch.Tensor, want_peak: bool):
        """``(v (M, N, d), model peak or None, observation peak)``; ``points`` are the observed coordinates."""
        rule = self.observations.rule(t)
        if not rule or self.strength == 0:
            return torch.zeros_like(points), None, 0.0
        misfit, peak, observation_peak = self.transport.misfit(t, rule, points, want_peak)
        return -self.strength * misfit, peak, observation_peak

    def velocity(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """Nudging velocity at time ``t`` for states ``x (M, N, D)``: ``(M, N, D)`` (zero off ``observed_dims``)."""
        x = check_points("x", x)
        if x.ndim == 2:
            return self.velocity(t, x.unsqueeze(0)).squeeze(0)
        velocity, _, _ = self._velocity(t, self._observed(x), want_peak=False)
        return self._embed(velocity, x)

    def _embed(self, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if velocity.shape[-1] == x.shape[-1] and self.observed_dims == list(range(x.shape[-1])):
            return velocity
        full = torch.zeros_like(x)
        full[..., self.observed_dims] = velocity
        return full

    def stability_rate(self, peak: float) -> float:
        """:math:`L = \\lambda P / (e h^2)` for a peak smoothed density ``P``."""
        return self.strength * peak / (math.e * self.bandwidth ** 2)

    def step(self, t: float, x: torch.Tensor, dt: float, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Base step, then the nudging flow over ``dt`` in ``n`` sub-steps (explicit or implicit): ``(M, N, D)``."""
        x = self.base.step(t, x, dt, generator)
        if self.strength == 0:
            self.last_substeps = 0
            return x
        observed = self._observed(x)
        rule = self.observations.rule(t + dt)
        if not rule:
            self.last_substeps = 0
            return x
        self._warn_past_observations(t + dt)
        want_peak = self.substeps is None or self.scheme != "explicit"
        if self._implicit_possible and self.scheme != "explicit":
            field, peak = self.transport.grid_field(t + dt, rule, observed, want_peak)
            observation_peak = max(self.transport.observation_peak(index, observed) for index, _ in rule)
        else:
            field = None
            velocity, peak, observation_peak = self._velocity(t + dt, observed, want_peak=want_peak)
        density = max(peak, observation_peak) if want_peak else None
        explicit_count = None if density is None else max(1, math.ceil(dt * self.stability_rate(density) /
                                                                        self.stability - 1e-12))
        implicit = field is not None and (self.scheme == "implicit" or explicit_count > _EXPLICIT_LIMIT)
        if implicit:
            count = self.substeps or min(explicit_count, self.implicit_substeps)
            observed = self._implicit.substeps(t + dt, rule, observed, dt / count, count, density, self.strength)
        else:
            count = self.substeps or explicit_count
            self._announce_cost(count)
            if field is not None:
                velocity = -self.strength * self.grid.interpolate(field, observed, check=False)
            observed = self._explicit_substeps(t + dt, observed, velocity, dt / count, count)
        self.last_scheme = "implicit" if implicit else "explicit"
        self.last_substeps = count
        self.total_substeps += count
        if observed.shape[-1] == x.shape[-1] and self.observed_dims == list(range(x.shape[-1])):
            return observed
        x = x.clone()
        x[..., self.observed_dims] = observed
        return x

    def _explicit_substeps(self, t, observed, velocity, h, count):
        if self.backend == "pairwise" and not math.isfinite(float(velocity.abs().max())):
            raise ValueError(f"strength: the nudging velocity is not finite at t={t:g}")
        observed = observed + h * velocity
        for _ in range(count - 1):
            velocity, _, _ = self._velocity(t, observed, want_peak=False)
            observed = observed + h * velocity
        return observed

    def _warn_past_observations(self, t: float) -> None:
        """Holding the last observation past its time is a choice the user must see, once."""
        last = float(self.observations.times[-1])
        if self._warned_hold or t <= last + 1e-6 * max(1.0, abs(last)):
            return
        self._warned_hold = True
        warnings.warn(f"observations: the run passes the last observation time t={last:g} (now t={t:g}); "
                      "the last observation is held from there on", RuntimeWarning, stacklevel=3)

    def _announce_cost(self, count: int) -> None:
        """Say once, before the run goes on, what an expensive explicit integration will cost."""
        if self._warned_cost or count <= _EXPLICIT_LIMIT:
            return
        self._warned_cost = True
        total = f", about {count * self._planned_steps:,} velocity evaluations in all" if self._planned_steps else ""
        cheaper = "; scheme='implicit' (grid backend) keeps it at a few per step" if self.scheme == "explicit" \
            and self._implicit_possible else ""
        warnings.warn(f"nudging: lambda={self.strength:g} needs {count} explicit sub-steps per model step{total}"
                      f"{cheaper}", RuntimeWarning, stacklevel=3)

    def f(self, t, y):
        """Drift of the flattened batch ``(M*N, D)``: the base drift plus the nudging velocity."""
        if y.ndim != 2 or y.shape[0] % self.n_experiments:
            raise ValueError(f"y: expected a (M*N, D) batch with M={self.n_experiments}, but got shape {tuple(y.shape)}")
        velocity = self.velocity(float(t), y.reshape(self.n_experiments, -1, y.shape[-1])).reshape_as(y)
        return self.base.f(t, y) + velocity

    def g(self, t, y):
        return self.base.g(t, y)

    def simulate(self, x0: torch.Tensor, times, dt: float, seed: Optional[int] = None, boundary=None,
                 progress: bool = True, meta: Optional[dict] = None) -> Trajectories:
        """Run the nudged model from ``x0 (M, N, D)`` and record at ``times (L,)`` (see :func:`torchmf.sde.simulate`).

        Raises ``ValueError`` if an observation time lies outside ``[times[0], times[-1]]``.
        """
        times_tensor = torch.as_tensor(times, dtype=torch.float64)
        if times_tensor.ndim != 1 or times_tensor.numel() < 2:
            raise ValueError("times: expected at least two recording times (L,)")
        self.observations.check_run(float(times_tensor[0]), float(times_tensor[-1]))
        x0 = check_points("x0", x0)
        if x0.shape[-1] != self.dim:
            raise ValueError(f"x0: expected state dimension {self.dim}, but got shape {tuple(x0.shape)}")
        state = x0 if x0.ndim == 3 else x0.unsqueeze(0)
        self.transport.batch(torch.empty(self.observations.n_experiments), state.shape[0])
        info = {"nudging": {"bandwidth": self.bandwidth, "strength": self.strength, "backend": self.backend,
                            "scheme": self.scheme}}
        self._planned_steps = max(1, math.ceil(float(times_tensor[-1] - times_tensor[0]) / float(dt)))
        return simulate_sde(self, state, times_tensor, dt, seed=seed, boundary=boundary, progress=progress,
                            meta={**info, **(meta or {})})
