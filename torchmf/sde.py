r"""McKean-Vlasov SDEs as torchsde-compatible modules, box boundaries, and ensemble simulation.

.. math::
    dX_i = \Big(F_{ext}(X_i) - \kappa\,(\nabla K * \mu^N_t)(X_i) + b_\theta(X_i)\Big)\,dt + \sigma(X_i)\, dW_i,
    \qquad \mu^N_t = \tfrac1N \sum_j \delta_{X_j(t)}

(the sign convention of the WSINDy paper: :math:`dX = (-\nabla K * \mu - \nabla V)dt + \sigma dB`
with :math:`F_{ext} = -\nabla V`).

:class:`McKeanVlasovSDE` follows torchsde's protocol (``f``, ``g``, ``noise_type``,
``sde_type``): the torchsde batch is the flattened particle ensemble ``(M*N, d)`` of
``n_experiments = M`` independent experiments, and the mean-field coupling is computed inside
``f`` within each experiment. :func:`simulate` integrates an ensemble ``(M, N, d)`` by
Euler-Maruyama with optional box boundaries and records a :class:`~torchmf.data.Trajectories`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ._memory import check_simulation_fits
from ._validation import as_float_tensor, check_int, check_points, check_positive, check_seed, check_tensor
from .interaction import InteractionForce
from .data import Trajectories

__all__ = ["McKeanVlasovSDE", "ReflectingBox", "PeriodicBox", "simulate", "make_generator", "record_loop",
           "DivergenceGuard", "DIVERGENCE_FACTOR"]

NOISE_TYPES = ("diagonal", "scalar")
#: A recorded particle farther than this many initial spreads from the initial centre means divergence.
DIVERGENCE_FACTOR = 1e6
SDE_TYPES = ("ito",)


class _Box:
    def __init__(self, lower, upper):
        self.lower = as_float_tensor("lower", lower, like=torch.zeros((), dtype=torch.float64)).reshape(-1)
        self.upper = as_float_tensor("upper", upper, like=torch.zeros((), dtype=torch.float64)).reshape(-1)
        if self.lower.shape != self.upper.shape and self.lower.numel() != 1 and self.upper.numel() != 1:
            raise ValueError(f"upper: expected as many entries as lower ({self.lower.numel()}), but got {self.upper.numel()}")
        if not bool((self.upper > self.lower).all()):
            raise ValueError(f"upper: expected upper > lower, but got lower={self.lower.tolist()}, upper={self.upper.tolist()}")

    def _bounds(self, x):
        return self.lower.to(x), self.upper.to(x)

    def __repr__(self):
        return f"{type(self).__name__}(lower={self.lower.tolist()}, upper={self.upper.tolist()})"


class ReflectingBox(_Box):
    """Reflect positions back into ``[lower, upper]`` (repeatedly, exactly: a triangle-wave fold)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        lower, upper = self._bounds(x)
        length = upper - lower
        folded = torch.remainder(x - lower, 2 * length)
        return lower + torch.where(folded > length, 2 * length - folded, folded)


class PeriodicBox(_Box):
    """Wrap positions onto the torus ``[lower, upper)``."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        lower, upper = self._bounds(x)
        return lower + torch.remainder(x - lower, upper - lower)


Diffusion = Union[float, Sequence[float], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


class McKeanVlasovSDE(nn.Module):
    """Interacting-particle SDE usable with ``torchsde.sdeint``.

    Arguments:
        dim: state dimension ``d``.
        external_force: callable ``(..., N, d) -> (..., N, d)``, :math:`F_{ext} = -\\nabla V` (optional).
        interaction: an :class:`~torchmf.interaction.InteractionForce`, or a potential (then the
            pairwise backend is used); optional.
        interaction_strength: :math:`\\kappa` multiplying :math:`\\nabla K * \\mu` (default 1).
        learned_drift: an ``nn.Module`` ``(..., N, d) -> (..., N, d)`` added to the drift (optional).
        diffusion: :math:`\\sigma`: a number, ``d`` numbers (diagonal), or a callable
            ``(..., N, d) -> (..., N, d)`` (state-dependent diagonal); default 0.
        n_experiments: ``M``, the number of independent ensembles in a flattened torchsde batch.
        noise_type: ``"diagonal"`` (default) or ``"scalar"`` (one Brownian motion per particle).
    """

    sde_type = "ito"

    def __init__(self, dim: int, external_force: Optional[Callable] = None, interaction=None,
                 interaction_strength: float = 1.0, learned_drift: Optional[nn.Module] = None,
                 diffusion: Diffusion = 0.0, n_experiments: int = 1, noise_type: str = "diagonal"):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type: Expected noise type in {set(NOISE_TYPES)}, but found {noise_type!r}")
        self.noise_type = noise_type
        self.dim = check_int("dim", dim, minimum=1)
        if external_force is not None and not callable(external_force):
            raise TypeError(f"external_force: expected a callable, but got {type(external_force).__name__}")
        self.external_force = external_force
        if interaction is not None and not isinstance(interaction, InteractionForce):
            interaction = InteractionForce(interaction, backend="pairwise")
        if interaction is not None:
            interaction.check = False  # states are validated once, by simulate()
        self.interaction = interaction
        self.interaction_strength = float(interaction_strength)
        if learned_drift is not None and not isinstance(learned_drift, nn.Module):
            raise TypeError(f"learned_drift: expected an nn.Module, but got {type(learned_drift).__name__}")
        self.learned_drift = learned_drift
        if callable(diffusion) and not isinstance(diffusion, torch.Tensor):
            self._diffusion_fn = diffusion
            self.register_buffer("_diffusion_const", None)
        else:
            constant = as_float_tensor("diffusion", diffusion).reshape(-1)
            if constant.numel() not in (1, self.dim):
                raise ValueError(f"diffusion: expected 1 or {self.dim} values, but got {constant.numel()}")
            if bool((constant < 0).any()):
                raise ValueError(f"diffusion: expected non-negative values, but got {constant.tolist()}")
            self._diffusion_fn = None
            self.register_buffer("_diffusion_const", constant)
        self.n_experiments = check_int("n_experiments", n_experiments, minimum=1)

    # -- physical shape (M, N, d) ------------------------------------------------------------------
    def drift(self, t, x: torch.Tensor) -> torch.Tensor:
        """Drift at positions ``x (..., N, d)``; mean-field coupling within each leading index."""
        total = torch.zeros_like(x)
        if self.external_force is not None:
            total = total + self.external_force(x)
        if self.interaction is not None and self.interaction_strength != 0:
            total = total - self.interaction_strength * self.interaction(x)
        if self.learned_drift is not None:
            total = total + self.learned_drift(x)
        return total

    def diffusion(self, t, x: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion :math:`\\sigma(x)` with the shape of ``x``."""
        if self._diffusion_fn is not None:
            return self._diffusion_fn(x)
        return self._diffusion_const.to(x).expand_as(x)

    # -- torchsde protocol ((M*N, d) batches) --------------------------------------------------------
    def _unflatten(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 2 or y.shape[0] % self.n_experiments:
            raise ValueError(
                f"y: expected a (M*N, d) torchsde batch with M={self.n_experiments}, but got shape {tuple(y.shape)}"
            )
        return y.reshape(self.n_experiments, -1, y.shape[-1])

    def f(self, t, y):
        return self.drift(t, self._unflatten(y)).reshape_as(y)

    def g(self, t, y):
        sigma = self.diffusion(t, self._unflatten(y)).reshape_as(y)
        return sigma.unsqueeze(-1) if self.noise_type == "scalar" else sigma

    def step(self, t: float, x: torch.Tensor, dt: float, generator: Optional[torch.Generator]) -> torch.Tensor:
        """One Euler-Maruyama step of ``x (M, N, d)``."""
        noise = torch.randn(x.shape if self.noise_type == "diagonal" else x.shape[:-1] + (1,),
                            generator=generator, device=x.device, dtype=x.dtype)
        return x + self.drift(t, x) * dt + self.diffusion(t, x) * noise * math.sqrt(dt)


def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (None: torch's global generator)."""
    if seed is None:
        return None
    seed = check_seed("seed", seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class DivergenceGuard:
    """Stop a run that blows up, before its positions overflow to inf.

    The bound: a recorded state diverges when some particle lies farther than
    ``factor`` (default :data:`DIVERGENCE_FACTOR` = 1e6) times the initial spread from the
    initial centre of its experiment, where the spread is the larger of the initial ensemble's
    extent (largest coordinate range), the box size (``boundary``) and 1 (absolute units, so
    a point start can still spread by diffusion). Explicit Euler with too large a ``dt`` grows
    geometrically or faster (``dt = 5`` on the double well reaches 1e28 in four steps), far
    beyond any physical spreading, so the message suggests a smaller ``dt``. NaN/inf are
    reported the same way.

    Arguments:
        initial: positions ``(M, N, d)`` at the start.
        dt: the run's step (for the message).
        name: what is simulated (for the message).
        boundary: optional box with ``lower``/``upper``.
    """

    def __init__(self, initial: torch.Tensor, dt: float, name: str = "the simulation", boundary=None,
                 factor: Optional[float] = None):
        flat = initial.detach().reshape(initial.shape[0], -1, initial.shape[-1])
        self.centre = flat.mean(1, keepdim=True)
        extent = float((flat.amax(1) - flat.amin(1)).max()) if flat.numel() else 0.0
        box = float((boundary.upper - boundary.lower).max()) if hasattr(boundary, "upper") else 0.0
        self.spread = max(extent, box, 1.0)
        self.factor = DIVERGENCE_FACTOR if factor is None else factor
        self.dt, self.name = dt, name

    def __call__(self, positions: torch.Tensor, t: float) -> None:
        """Raise ``ValueError`` (naming ``dt``) if ``positions (M, N, d)`` diverged by time ``t``."""
        flat = positions.reshape(positions.shape[0], -1, positions.shape[-1])
        distance = float((flat - self.centre.to(flat)).abs().amax()) if flat.numel() else 0.0
        if not math.isfinite(distance):
            raise ValueError(f"dt: {self.name} produced NaN/inf by t={t:g}; reduce dt={self.dt:g}")
        if distance > self.factor * self.spread:
            raise ValueError(f"dt: {self.name} diverged by t={t:g}: a particle is {distance:.3g} from the initial "
                             f"centre, more than {self.factor:g} x the initial spread {self.spread:.3g}; "
                             f"reduce dt={self.dt:g}")


def record_loop(step: Callable, state, times: Sequence[float], dt: float, record: Callable,
                progress: bool = True, description: str = "simulate"):
    """Advance ``state`` with ``step(t, state, dt) -> state`` and call ``record(index, state)`` at
    every time in ``times`` (the first is the initial state). Steps never exceed ``dt``; the
    last step before a recording time is shortened to land on it exactly."""
    times = [float(t) for t in times]
    plan = []
    for start, end in zip(times[:-1], times[1:]):
        count = max(1, math.ceil((end - start) / dt - 1e-9))
        plan.append((start, (end - start) / count, count))
    record(0, state)
    with tqdm(total=sum(c for _, _, c in plan), disable=not progress, desc=description, leave=False) as bar:
        for index, (start, step_size, count) in enumerate(plan, start=1):
            for k in range(count):
                state = step(start + k * step_size, state, step_size)
            bar.update(count)
            record(index, state)
    return state


def simulate(sde: McKeanVlasovSDE, x0: torch.Tensor, times, dt: float, seed: Optional[int] = None,
             generator: Optional[torch.Generator] = None, boundary=None, progress: bool = True,
             meta: Optional[dict] = None) -> Trajectories:
    """Integrate an ensemble with Euler-Maruyama and record it.

    Arguments:
        sde: a :class:`McKeanVlasovSDE` (or any module with ``step(t, x, dt, generator)``).
        x0: initial positions ``(M, N, d)`` (``(N, d)`` is one experiment).
        times: increasing recording times ``(L,)``; integration starts at ``times[0]``.
        dt: maximal step.
        seed / generator: randomness (a seed builds a generator on ``x0``'s device).
        boundary: :class:`ReflectingBox`, :class:`PeriodicBox` or None.
        progress: show a progress bar.

    Returns:
        :class:`~torchmf.data.Trajectories` with positions ``(M, L, N, d)``.
    """
    x0 = check_points("x0", x0)
    if x0.ndim == 2:
        x0 = x0.unsqueeze(0)
    if x0.ndim != 3:
        raise ValueError(f"x0: expected shape (M, N, d) or (N, d), but got {tuple(x0.shape)}")
    times = check_tensor("times", torch.as_tensor(times, dtype=torch.float64), ndim=1)
    if times.numel() < 1 or (times.numel() > 1 and not bool((times[1:] > times[:-1]).all())):
        raise ValueError("times: expected a non-empty, strictly increasing sequence of recording times")
    dt = check_positive("dt", dt)
    if generator is None:
        generator = make_generator(seed, x0.device)
    if boundary is not None and not hasattr(boundary, "apply"):
        raise TypeError(f"boundary: expected ReflectingBox, PeriodicBox or None, but got {type(boundary).__name__}")
    check_simulation_fits(x0.shape[0], times.numel(), x0.shape[-2], x0.shape[-1], x0.dtype, x0.device, "x0")
    record = torch.empty((x0.shape[0], times.numel()) + tuple(x0.shape[1:]), dtype=x0.dtype, device=x0.device)
    guard = DivergenceGuard(x0, dt, "the simulation", boundary)

    def step(t, x, h):
        x = sde.step(t, x, h, generator)
        return boundary.apply(x) if boundary is not None else x

    def store(index, x):
        guard(x, float(times[index]))
        record[:, index] = x

    with torch.no_grad():
        record_loop(step, x0, times.tolist(), dt, store, progress)
    return Trajectories(record, times.to(x0), meta or {})
