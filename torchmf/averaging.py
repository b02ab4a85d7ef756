r"""Flow-parameterized averaged dynamics: learn the slow SDE of a fast-slow system from one slow path.

Model (see :mod:`torchmf.systems.fastslow`):
:math:`dX = f_\theta(X, Y)dt + \sigma dW`, :math:`dY = \varepsilon^{-1} g(X, Y)dt + \varepsilon^{-1/2}\tau dB`.
Only a path of ``X`` is observed. Averaging gives :math:`dX = F(X)dt + \sigma dW` with

.. math:: F(x) = E_{y \sim q_\phi(\cdot\mid x)}[f_\theta(x, y)] \approx \tfrac1S \textstyle\sum_s f_\theta(x, y_s),

:math:`q_\phi(y \mid x)` a conditional normalizing flow standing for the fast invariant law
:math:`\rho_x`, sampled with reparameterization. Training minimizes the Euler-Maruyama negative
log-likelihood of the observed transitions plus ``penalty_weight`` times the stationarity residual
:math:`\sum_j E_{x}\big(E_{q_\phi(\cdot|x)}[\mathcal L_x \psi_j]\big)^2`, with
:math:`\mathcal L_x \psi = g(x,\cdot)\cdot\nabla\psi + \tfrac{\tau^2}2 \Delta\psi` (autograd through
:mod:`torch.func`) over a fixed family of test functions :math:`\psi_j`.

Both squared terms are estimated without Monte-Carlo bias: the ``S`` samples are split into two
independent halves and the square :math:`r^2` is replaced by :math:`r^{(1)} r^{(2)}` (a plain
square would reward :math:`q_\phi` for shrinking the spread of :math:`f_\theta(x, Y)`).

Classes: :class:`FlowAveragedDrift` (``density="flow"`` or ``"gaussian"``, the Gaussian
closure), :class:`NeuralDrift` (black-box baseline), :class:`ReducedSDE` and
:func:`simulate_reduced` (torchsde), :func:`fit_fast_law` (``q_phi`` alone, no data, by reverse KL to
the system's known unnormalized fast law -- it sees the weights of separated modes, which the
moment conditions of the penalty barely do; used for the bimodal tilted well). The variational
posterior is :mod:`torchmf.variational`.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torchsde
from torch import nn
from torch.func import jvp

from ._validation import check_choice, check_int, check_positive, check_tensor
from .flows import ConditionalGaussian, conditional_spline_flow
from .particles import Trajectories

__all__ = ["FlowAveragedDrift", "NeuralDrift", "TestFunctions", "ReducedSDE", "simulate_reduced", "path_transitions",
           "em_negative_log_likelihood", "PathStatistics", "fast_system", "drift_error", "build_pretrained",
           "fit_fast_law", "fast_base_noise"]

DENSITIES = ("flow", "gaussian")


def fast_system(system, params: Optional[dict] = None):
    """A :class:`~torchmf.systems.fastslow.FastSlowSystem` from a registered name, an import path
    ``"package.module.Class"`` of a user-defined subclass (also as ``{"class_path": ..., "init_args": {...}}``,
    the YAML form), or the object itself. A system built from an import path carries that path as its
    ``registered_name``, so configs and checkpoints that store it rebuild it in a fresh process."""
    from . import systems
    from .systems.fastslow import FastSlowSystem

    if isinstance(system, FastSlowSystem):
        return system
    if isinstance(system, dict):
        system, params = split_class_path(system, params)
    if isinstance(system, str) and system not in systems.names() and "." in system:
        return _imported_system(system, params)
    if not isinstance(system, str) or system not in systems.names():
        raise ValueError(f"system: expected a registered fast-slow system (fastslow_cubic, fastslow_tilted_well, "
                         f"lorenz96_two_scale), but got {system!r}")
    built = systems.get(system, **dict(params or {}))
    if not isinstance(built, FastSlowSystem):
        raise ValueError(f"system: expected a fast-slow system (fastslow_*, lorenz96_two_scale), but got {system!r}")
    return built


def split_class_path(spec: dict, params: Optional[dict] = None):
    """``{"class_path": path, "init_args": {...}}`` -> ``(path, init_args updated by params)``."""
    unknown = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or unknown or not isinstance(spec.get("init_args", {}), dict):
        raise ValueError(f"system: expected a name or {{class_path: package.module.Class, init_args: {{...}}}}, "
                         f"but got {spec!r}")
    return spec["class_path"], {**spec.get("init_args", {}), **dict(params or {})}


def _imported_system(path: str, params: Optional[dict]):
    """Instantiate the user's :class:`FastSlowSystem` subclass named by its import path."""
    import importlib

    from .systems.fastslow import FastSlowSystem

    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"system: cannot import {path!r} ({error}); put its module on PYTHONPATH") from None
    if not (isinstance(cls, type) and issubclass(cls, FastSlowSystem)):
        raise ValueError(f"system: {path!r} is not a subclass of torchmf.systems.fastslow.FastSlowSystem")
    built = cls(**dict(params or {}))
    built.registered_name = path  # stored in configs and checkpoints: rebuilt by import in a fresh process
    return built


# -- data -----------------------------------------------------------------------------------------------
def path_transitions(positions: torch.Tensor, times: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transitions of one observed slow path.

    Arguments:
        positions: ``(L, d)`` observed slow states (a ``(M, L, 1, d)`` Trajectories tensor: take one experiment).
        times: ``(L,)`` strictly increasing observation times.

    Returns:
        ``x (L-1, d)`` start states, ``dx (L-1, d)`` increments, ``dt (L-1,)`` time steps.
    """
    positions = check_tensor("positions", positions, ndim=2)
    times = check_tensor("times", torch.as_tensor(times, dtype=positions.dtype, device=positions.device), ndim=1)
    if times.numel() != positions.shape[0] or times.numel() < 2:
        raise ValueError(f"times: expected {positions.shape[0]} >= 2 entries like positions, but got {times.numel()}")
    steps = times.diff()
    if not bool((steps > 0).all()):
        raise ValueError(f"times: expected strictly increasing times, but {int((steps <= 0).sum())} steps are <= 0")
    return positions[:-1], positions.diff(dim=0), steps


def em_negative_log_likelihood(dx, dt, drift_a, drift_b, sigma) -> torch.Tensor:
    r"""Euler-Maruyama negative log-likelihood of transitions, ``(..., B)``.

    :math:`\tfrac12\sum_i\big[(dx - F^{(1)} dt)(dx - F^{(2)} dt)/(\sigma^2 dt) + \log(2\pi\sigma^2 dt)\big]_i`
    with two independent drift estimates ``drift_a``, ``drift_b`` ``(..., B, d)`` (equal for an
    exact drift); ``dx (B, d)``, ``dt (B,)``, ``sigma (..., 1, d)`` or ``(d,)``.
    """
    step = dt.unsqueeze(-1)
    variance = sigma**2 * step
    residual = (dx - drift_a * step) * (dx - drift_b * step)
    return 0.5 * (residual / variance + torch.log(2 * math.pi * variance)).sum(-1)


class PathStatistics(nn.Module):
    r"""The Euler-Maruyama likelihood of a whole one-dimensional path through its sufficient statistics.

    With :math:`F` linear between ``n_nodes`` equally spaced nodes :math:`z_k` spanning the observed
    states (``F(x_i) = \sum_k W_{ik} F_k``, two non-zero weights per row), the path's negative
    log-likelihood :math:`\sum_i (dx_i - F(x_i)dt_i)^2 / (2\sigma^2 dt_i) + \ldots` is a quadratic
    form in the node values with coefficients :math:`W^\top dx` and the tridiagonal
    :math:`W^\top \mathrm{diag}(dt) W`, summed once from the data. Each training step then sees
    the likelihood of every transition for the price of ``n_nodes`` drift evaluations: no
    minibatch noise. The interpolation error is at most :math:`h^2 \max|F''| / 8` (``h`` the
    node spacing; about 3e-4 for ``fastslow_cubic`` with 256 nodes).

    Arguments: ``x, dx (n, 1)`` start states and increments, ``dt (n,)`` time steps (one slow dimension).
    Buffers follow the module's device and dtype; sums are taken in float64.
    """

    def __init__(self, x: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor, n_nodes: int = 256):
        super().__init__()
        x = check_tensor("x", x, ndim=2).double()
        if x.shape[-1] != 1:
            raise ValueError(f"x: path statistics need one slow dimension, but got d = {x.shape[-1]}")
        dx = check_tensor("dx", dx, ndim=2).double().reshape(-1)
        dt = check_tensor("dt", dt, ndim=1).double()
        if not x.shape[0] == dx.numel() == dt.numel() or not bool((dt > 0).all()):
            raise ValueError(f"dt: expected {x.shape[0]} positive time steps like x and dx, but got {dt.numel()}")
        nodes_count = check_int("n_nodes", n_nodes, minimum=2)
        low, high = float(x.min()), float(x.max())
        high = high if high > low else low + 1.0
        position = (x[:, 0] - low) / (high - low) * (nodes_count - 1)
        index = position.floor().clamp(0, nodes_count - 2).long()
        weight = position - index  # share of the right-hand node
        def scatter(values, offset=0, size=nodes_count):
            return torch.zeros(size, dtype=torch.float64).index_add_(0, index + offset, values)
        self.count = x.shape[0]
        self.register_buffer("nodes", torch.linspace(low, high, nodes_count, dtype=torch.float64).unsqueeze(-1))
        self.register_buffer("linear", scatter((1 - weight) * dx) + scatter(weight * dx, 1))
        self.register_buffer("diagonal", scatter((1 - weight) ** 2 * dt) + scatter(weight**2 * dt, 1))
        self.register_buffer("off_diagonal", scatter(weight * (1 - weight) * dt, size=nodes_count)[:-1])
        self.register_buffer("constant", torch.stack(((dx**2 / dt).sum(), torch.log(2 * math.pi * dt).sum())))

    def mean_nll(self, drift_a: torch.Tensor, drift_b: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per transition from two independent estimates of the node
        drifts ``(..., G, 1)`` and ``sigma`` ``(..., 1)`` or ``(1,)``: shape ``(...)``."""
        first, second = drift_a[..., 0], drift_b[..., 0]
        linear, diagonal, off = (self.linear.to(first), self.diagonal.to(first), self.off_diagonal.to(first))
        quadratic = (first * diagonal * second).sum(-1) + (off * (first[..., :-1] * second[..., 1:]
                                                                 + first[..., 1:] * second[..., :-1])).sum(-1)
        squares = self.constant[0].to(first) - ((first + second) * linear).sum(-1) + quadratic
        variance = sigma[..., 0] ** 2
        return 0.5 * (squares / variance + self.count * torch.log(variance) + self.constant[1].to(first)) / self.count


# -- test functions and the stationarity residual ------------------------------------------------------
class TestFunctions(nn.Module):
    r"""Test functions :math:`\psi_j(y)` of the stationarity penalty, ``y (..., k) -> (..., J)``.

    ``kind="bumps"`` (one fast dimension): :math:`y` and ``n_bumps`` Gaussian bumps of width equal
    to their spacing on ``[-span, span]`` -- each bump checks the local balance of the fast
    generator, so a law stuck in the wrong well is seen where it sits. ``kind="fourier"``: the powers
    :math:`y_i, y_i^2, \ldots, y_i^{\mathrm{degree}}` of each coordinate and ``n_fourier`` random
    features :math:`\sin(w_j\cdot y + b_j)`,
    :math:`w_j \sim N(0, I/\ell^2)` (``length`` :math:`\ell`, fixed by ``seed``). ``"auto"``: bumps
    when ``k = 1``.

    Why powers up to 3 by default: a finite family only fixes the moments :math:`E_q[\mathcal L_x\psi_j]`,
    and a flow can move its skewness freely while every sine moment stays put; for an OU-like fast
    law the powers 1-3 pin the first three moments exactly (``degree=2`` was the earlier family).
    """

    def __init__(self, features: int, n_fourier: int = 16, length: float = 1.0, seed: int = 0, kind: str = "fourier",
                 n_bumps: int = 32, span: float = 4.0, degree: int = 3):
        super().__init__()
        kind = check_choice("kind", kind, ("auto", "bumps", "fourier"))
        self.degree = check_int("degree", degree, minimum=1)
        self.kind = ("bumps" if features == 1 else "fourier") if kind == "auto" else kind
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", torch.randn(n_fourier, features, generator=generator) / length)
        self.register_buffer("phases", 2 * math.pi * torch.rand(n_fourier, generator=generator))
        self.register_buffer("centres", torch.linspace(-span, span, n_bumps))
        self.width = 2 * span / max(n_bumps - 1, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "bumps":
            bumps = torch.exp(-0.5 * ((y - self.centres.to(y)) / self.width) ** 2)  # (..., n_bumps) for k = 1
            return torch.cat((y, bumps), dim=-1)
        fourier = torch.sin(y @ self.frequencies.T.to(y) + self.phases.to(y))
        return torch.cat([y**power for power in range(1, self.degree + 1)] + [fourier], dim=-1)


def generator_applied(system, test_functions: TestFunctions, x: torch.Tensor, y: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    r""":math:`\mathcal L_x\psi_j(y) = g(x, y)\cdot\nabla\psi_j(y) + \tfrac{\tau^2}2\Delta\psi_j(y)` for
    ``x (B, d)``, ``y (B, S, k)`` -> ``(B, S, J)``; derivatives by autograd (differentiable in ``y``).

    Forward-mode autograd along each fast coordinate ``e_i`` gives :math:`\partial_i\psi_j` and, nested,
    :math:`\partial_{ii}\psi_j` for all ``j`` at once: ``2k`` cheap passes instead of a Jacobian per sample.
    """
    batch, count, features = y.shape
    flat = y.reshape(-1, features)
    drift = system.fast_drift(x.unsqueeze(1), y).reshape(-1, features)
    applied = 0.0
    for axis in range(features):
        direction = torch.zeros_like(flat)
        direction[:, axis] = 1.0

        def derivative(point):
            return jvp(test_functions, (point,), (direction,))[1]

        first, second = jvp(derivative, (flat,), (direction,))
        applied = applied + drift[:, axis:axis + 1] * first + 0.5 * temperature * system.tau**2 * second
    return applied.reshape(batch, count, -1)


def fast_base_noise(shape, generator: Optional[torch.Generator], like: torch.Tensor, stratified: bool = False):
    """Standard normal base noise ``shape = (B, S, k)`` on ``like``'s device and dtype.

    ``stratified`` (``k = 1``, even ``S``): each half of the ``S`` draws takes one draw per
    equal-probability stratum, still unbiased for means, with far smaller Monte-Carlo noise; the two
    halves stay independent (the unbiased two-halves products rely on it). Otherwise plain draws.
    """
    batch, count, features = shape
    if stratified and features == 1 and count % 2 == 0:
        half = count // 2
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float64)
        strata = torch.arange(half, device=like.device, dtype=torch.float64).repeat(2).reshape(1, count, 1)
        # in float64 and kept strictly inside (0, 1): torch.rand can return 0, and (strata + u) / half
        # rounds to exactly 1 for large strata counts; ndtri(0 or 1) is -inf or inf
        probability = ((strata + uniform) / half).clamp(1e-300, 1 - 2**-53)
        return torch.special.ndtri(probability).to(like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


# -- the averaged drift ---------------------------------------------------------------------------------
class _AveragedModel(nn.Module):
    """Shared pieces: slow noise ``sigma (d,)`` as ``exp(log_sigma)``, the data range, the EM loss."""

    def _init_common(self, dim: int, sigma_init: float):
        self.dim = dim
        self.log_sigma = nn.Parameter(torch.full((dim,), math.log(check_positive("sigma_init", sigma_init))))
        # observed-path statistics (5%, 95% quantiles, min, max): scoring range and penalty points
        self.register_buffer("data_range", torch.tensor([[-1.0, 1.0, -1.0, 1.0]] * dim).T.contiguous())

    @property
    def sigma(self) -> torch.Tensor:
        """Slow diffusion ``(d,)``."""
        return self.log_sigma.exp()

    def set_data_range(self, x: torch.Tensor) -> None:
        """Record the 5-95% quantiles and the extremes of observed states ``x (n, d)``."""
        x = check_tensor("x", x, ndim=2)
        quantiles = torch.quantile(x.double(), torch.tensor([0.05, 0.95], dtype=torch.float64, device=x.device), dim=0)
        stats = torch.cat((quantiles, x.double().min(0, keepdim=True).values, x.double().max(0, keepdim=True).values))
        self.data_range.copy_(stats.to(self.data_range))

    def quantile_grid(self, n_points: int = 200) -> torch.Tensor:
        """``(n_points, d)`` evenly spaced points between the stored 5% and 95% quantiles."""
        weights = torch.linspace(0, 1, n_points, device=self.data_range.device, dtype=self.data_range.dtype)
        return self.data_range[0] + weights.unsqueeze(-1) * (self.data_range[1] - self.data_range[0])

    def path_nll(self, x: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Mean EM negative log-likelihood per transition of ``x, dx (B, d)``, ``dt (B,)`` (scalar)."""
        drift_a, drift_b = self.drift_pair(x)
        return em_negative_log_likelihood(dx, dt, drift_a, drift_b, self.sigma).mean()

    def stationarity_penalty(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())


class FlowAveragedDrift(_AveragedModel):
    r"""Averaged drift :math:`F(x) = E_{q_\phi(y|x)} f_\theta(x, y)` of a fast-slow model.

    Arguments:
        system: registered fast-slow system name (its ``slow_drift`` form, ``fast_drift`` g and
            ``tau`` are the model structure; its true parameters are not used for fitting).
        system_params: the system's constructor parameters (``tau``, ``tilt``...).
        density: ``"flow"`` (conditional spline flow) or ``"gaussian"`` (Gaussian closure).
        hidden, layers, bins, tail_bound, scale: size of :math:`q_\phi` (see :mod:`torchmf.flows`).
        n_samples: Monte-Carlo samples of ``y`` per ``x`` for :math:`F` (even, split in two halves).
        theta_init: initial :math:`\theta` ``(P,)`` (default ones); ``sigma_init``: initial slow noise.
        n_fourier, test_length, seed, test_kind, test_degree: the test-function family of the
            stationarity penalty (``"fourier"`` with powers up to ``test_degree``, ``"bumps"`` --
            better for multimodal fast laws -- or ``"auto"``).
        normalize_penalty: weigh each test function by its inverse Monte-Carlo variance (see
            :meth:`stationarity_penalty`).
        flow_affine: ``"linear"`` (location and spread affine in ``x`` plus an MLP) or ``"made"``
            (the first session's flow, see :func:`torchmf.flows.conditional_spline_flow`).

    Shapes: ``drift(x)``: ``x (..., d) -> (..., d)``; ``sample_fast(x, n)``: ``(B, d) -> (B, n, k)``.
    """

    def __init__(self, system: str = "fastslow_cubic", system_params: Optional[dict] = None, density: str = "flow",
                 hidden: int = 32, layers: int = 1, bins: int = 8, tail_bound: float = 4.0, scale: float = 1.5,
                 n_samples: int = 32, theta_init: Optional[Sequence[float]] = None, sigma_init: float = 1.0,
                 n_fourier: int = 16, test_length: float = 1.0, seed: int = 0, test_kind: str = "fourier",
                 test_degree: int = 3, normalize_penalty: bool = True, flow_affine: str = "linear"):
        super().__init__()
        self.system = fast_system(system, system_params)
        self.normalize_penalty = bool(normalize_penalty)
        self.density_kind = check_choice("density", density, DENSITIES)
        self.n_samples = check_int("n_samples", n_samples, minimum=2)
        self.config = dict(system=self.system.registered_name, system_params=dict(system_params or {}),
                           density=density, hidden=hidden, layers=layers, bins=bins, tail_bound=tail_bound, scale=scale,
                           n_samples=n_samples, theta_init=theta_init, sigma_init=sigma_init, n_fourier=n_fourier,
                           test_length=test_length, seed=seed, test_kind=test_kind, test_degree=test_degree,
                           normalize_penalty=bool(normalize_penalty), flow_affine=flow_affine)
        dim, features = self.system.dim, self.system.fast_dim
        with torch.random.fork_rng():  # network initialization is part of the model's seed
            torch.manual_seed(seed)
            if density == "flow":
                self.density = conditional_spline_flow(features, dim, hidden, layers, bins, tail_bound, scale,
                                                       flow_affine)
            else:
                self.density = ConditionalGaussian(features, dim, hidden, scale=1.0)
        count = len(self.system.parameter_names)
        theta = torch.ones(count) if theta_init is None else torch.as_tensor(theta_init, dtype=torch.float32)
        if theta.shape != (count,):
            raise ValueError(f"theta_init: expected {count} values {self.system.parameter_names}, but got {theta.tolist()}")
        self.theta = nn.Parameter(theta.clone())
        self._init_common(dim, sigma_init)
        self.test_functions = TestFunctions(features, n_fourier, test_length, seed, test_kind, degree=test_degree)
        # multiplies tau^2 in the penalty; trainers anneal it from > 1 down to 1 so that q_phi
        # follows the fast law from a broad, unimodal one instead of locking into one well
        self.penalty_temperature = 1.0

    @property
    def parameter_names(self):
        return list(self.system.parameter_names)

    def sample_fast(self, x: torch.Tensor, n_samples: int, generator: Optional[torch.Generator] = None,
                    stratified: bool = False) -> torch.Tensor:
        """``n_samples`` draws of :math:`q_\\phi(\\cdot|x)` for ``x (B, d)``: ``(B, n_samples, k)`` (reparameterized).

        ``stratified`` (one fast dimension only): each half of the samples takes one base-noise draw
        per equal-probability stratum, still unbiased for means, with far smaller Monte-Carlo noise.
        """
        x = check_tensor("x", x, ndim=2, last_dim=self.dim)
        noise = fast_base_noise((x.shape[0], n_samples, self.system.fast_dim), generator, x, stratified)
        return self.density.sample_from_noise(noise, x)

    def drift_samples(self, x: torch.Tensor, y: torch.Tensor, theta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:math:`f_\\theta(x, y_s)` for ``x (B, d)``, ``y (B, S, k)``: ``(B, S, d)``, or ``(T, B, S, d)``
        for ``theta (T, P)`` (posterior samples)."""
        theta = self.theta if theta is None else theta
        if theta.ndim == 2:
            theta = theta[:, None, None, :]
        return self.system.slow_drift(x.unsqueeze(-2), y, theta.to(x))

    def drift_pair(self, x: torch.Tensor, theta: Optional[torch.Tensor] = None):
        """Two independent Monte-Carlo estimates of :math:`F(x)`, each ``(B, d)`` (or ``(T, B, d)``)."""
        values = self.drift_samples(x, self.sample_fast(x, self.n_samples, stratified=True), theta)
        first, second = values.chunk(2, dim=-2)
        return first.mean(-2), second.mean(-2)

    def drift(self, x: torch.Tensor, n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None,
              theta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Monte-Carlo :math:`F(x)`: ``x (..., d) -> (..., d)`` with ``n_samples`` (default ``4 * n_samples``)."""
        x = check_tensor("x", x, min_ndim=1, last_dim=self.dim)
        flat = x.reshape(-1, self.dim)
        count = n_samples or 4 * self.n_samples
        values = self.drift_samples(flat, self.sample_fast(flat, count, generator, stratified=count % 2 == 0), theta)
        return values.mean(-2).reshape(x.shape)

    forward = drift

    def _applied_test_functions(self, x: torch.Tensor, n_samples: Optional[int] = None) -> torch.Tensor:
        y = self.sample_fast(x, n_samples or self.n_samples, stratified=True)
        return generator_applied(self.system, self.test_functions, x, y, self.penalty_temperature)

    def stationarity_residual(self, x: torch.Tensor, n_samples: Optional[int] = None):
        """Two independent estimates of :math:`E_{q(\\cdot|x)}[\\mathcal L_x\\psi_j]` for ``x (B, d)``: each ``(B, J)``."""
        first, second = self._applied_test_functions(x, n_samples).chunk(2, dim=1)
        return first.mean(1), second.mean(1)

    def stationarity_penalty(self, x: torch.Tensor, n_samples: Optional[int] = None) -> torch.Tensor:
        """Mean over ``x (B, d)`` of :math:`\\sum_j w_j (E_q \\mathcal L_x\\psi_j)^2` (unbiased two-halves estimate).

        ``normalize_penalty`` (default): :math:`w_j = 1 / \\overline{\\mathrm{Var}_q(\\mathcal L_x\\psi_j)}`
        (sample variance averaged over the points, no gradient), so every moment condition counts
        in units of its own Monte-Carlo spread; without it a large term (``y^3`` far from the law)
        swamps the rest and its noise drives the flow to collapse. Otherwise :math:`w_j = 1`.
        """
        applied = self._applied_test_functions(x, n_samples)
        first, second = applied.chunk(2, dim=1)
        products = first.mean(1) * second.mean(1)
        if self.normalize_penalty:
            products = products / (applied.detach().var(1).mean(0) + 1e-6)
        return products.sum(-1).mean()

    def fast_law_divergence(self, x: torch.Tensor, n_samples: Optional[int] = None) -> torch.Tensor:
        r"""Reverse Kullback-Leibler divergence :math:`E_x\,KL(q_\phi(\cdot|x)\,\|\,\rho_x^{1/T})` up to
        each ``x``'s log normalizer (``T`` = ``penalty_temperature``), for ``x (B, d)``: a scalar.

        Needs the system's unnormalized ``fast_log_density`` (known from ``g`` and ``tau``). Why
        besides the stationarity penalty: moment conditions :math:`E_q[\mathcal L_x\psi_j] = 0`
        are nearly met by a law sitting in one well of a double well (a metastable law is locally
        stationary), so they barely see the weights of separated modes; the divergence does.
        Reparameterized samples (stratified) and the density's ``log_prob``.
        """
        count = n_samples or self.n_samples
        y = self.sample_fast(x, count, stratified=True)
        batch, features = x.shape[0], self.system.fast_dim
        log_q = self.density.log_prob(y.reshape(-1, features), x.repeat_interleave(count, 0)).reshape(batch, count)
        log_rho = self.system.fast_log_density(x.unsqueeze(1), y)
        return (log_q - log_rho / self.penalty_temperature).mean()

    def penalty_points(self, n_points: int, generator: Optional[torch.Generator] = None,
                       stratified: bool = True) -> torch.Tensor:
        """``(n_points, d)`` uniform points over the observed range widened by 10% (where the penalty is enforced).

        ``stratified``: point ``i`` is uniform in the ``i``-th of ``n_points`` equal slices of the
        range (each coordinate's slices in an independent random order), still uniform marginally
        but covering the range evenly at every step.
        """
        low, high = self.data_range[2], self.data_range[3]
        margin = 0.1 * (high - low)
        uniform = torch.rand((n_points, self.dim), generator=generator, device=low.device, dtype=low.dtype)
        if stratified:
            order = torch.rand((n_points, self.dim), generator=generator, device=low.device).argsort(dim=0)
            uniform = (order.to(low.dtype) + uniform) / n_points
        return low - margin + uniform * (high - low + 2 * margin)


class NeuralDrift(_AveragedModel):
    """Black-box baseline: an MLP ``F(x)`` and a constant ``sigma``, fitted by EM likelihood only.

    Shapes: ``drift(x)``: ``x (..., d) -> (..., d)``.
    """

    def __init__(self, dim: int = 1, hidden: int = 64, sigma_init: float = 1.0, seed: int = 0):
        super().__init__()
        self.config = dict(dim=dim, hidden=hidden, sigma_init=sigma_init, seed=seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, dim))
        self._init_common(check_int("dim", dim, minimum=1), sigma_init)

    def drift(self, x: torch.Tensor, **unused) -> torch.Tensor:
        return self.net(check_tensor("x", x, min_ndim=1, last_dim=self.dim))

    forward = drift

    def drift_pair(self, x, theta=None):
        value = self.drift(x)
        return value, value


def fit_fast_law(model: "FlowAveragedDrift", steps: int, n_points: int = 128, learning_rate: float = 5e-3,
                 temperature: float = 3.0, seed: int = 0, progress: bool = False) -> float:
    """Fit ``model``'s fast law :math:`q_\\phi(y|x)` alone (no data) by :meth:`FlowAveragedDrift.fast_law_divergence`.

    ``steps`` Adam steps (cosine decay to 5%) on ``n_points`` stratified points per step over the
    model's penalty range (call ``set_data_range`` first); the target is tempered, ``temperature``
    times ``tau^2`` at step 0 down to ``tau^2`` at half the steps, so that the flow starts broad over
    every mode and then sharpens instead of locking into one well. Only the density's parameters
    move. Returns the last divergence value.
    """
    from tqdm.auto import tqdm

    steps = check_int("steps", steps, minimum=1)
    temperature = check_positive("temperature", temperature)
    parameters = list(model.density.parameters())
    optimizer = torch.optim.Adam(parameters, lr=check_positive("learning_rate", learning_rate))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=0.05 * learning_rate)
    generator = torch.Generator(device=model.data_range.device).manual_seed(seed)
    value = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in tqdm(range(steps), desc="fast law", disable=not progress):
            model.penalty_temperature = 1.0 + (temperature - 1.0) * max(0.0, 1.0 - step / (0.5 * steps))
            loss = model.fast_law_divergence(model.penalty_points(n_points, generator))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"loss: the fast-law divergence became {value} at step {step}")
    model.penalty_temperature = 1.0
    return value


# -- scoring ---------------------------------------------------------------------------------------------
def drift_error(model, system=None, n_points: int = 200, n_samples: int = 4096, seed: int = 0) -> float:
    """Relative L2 error of ``model.drift`` against the true averaged drift on the model's 5-95% quantile grid."""
    from .metrics import relative_error

    system = fast_system(system if system is not None else model.system)
    with torch.no_grad():
        grid = model.quantile_grid(n_points)
        generator = torch.Generator(device=grid.device).manual_seed(seed)
        kwargs = {"n_samples": n_samples, "generator": generator} if hasattr(model, "sample_fast") else {}
        estimate = model.drift(grid, **kwargs)
        truth = system.averaged_drift(grid.double()).to(estimate)
    return float(relative_error(estimate.double(), truth.double()))


# -- the learned reduced SDE -----------------------------------------------------------------------------
class ReducedSDE(nn.Module):
    """The learned slow SDE :math:`dX = F(X)dt + \\sigma dW` for ``torchsde.sdeint`` (batch ``(M, d)``).

    The Monte-Carlo drift uses one fixed set of ``n_samples`` base-noise draws (common random
    numbers), so :math:`F` is a deterministic function along the simulation.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: nn.Module, n_samples: int = 256, seed: int = 0):
        super().__init__()
        self.model = model
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.seed = seed

    def f(self, t, y):
        if hasattr(self.model, "sample_fast"):
            generator = torch.Generator(device=y.device).manual_seed(self.seed)
            return self.model.drift(y, n_samples=self.n_samples, generator=generator)
        return self.model.drift(y)

    def g(self, t, y):
        return self.model.sigma.to(y).expand_as(y)


def simulate_reduced(model: nn.Module, x0: torch.Tensor, times, dt: float = 1e-2, seed: int = 0,
                     n_samples: int = 256) -> Trajectories:
    """Simulate the learned reduced SDE with torchsde (Euler-Maruyama).

    Arguments:
        model: a :class:`FlowAveragedDrift`, :class:`NeuralDrift` or a variational model (``drift``, ``sigma``).
        x0: initial slow states ``(M, d)`` (``M`` independent paths).
        times: increasing output times ``(L,)``.
        dt: integration step; seed: Brownian motion seed; n_samples: Monte-Carlo size of ``F``.

    Returns:
        :class:`~torchmf.particles.Trajectories` ``(M, L, 1, d)``.
    """
    x0 = check_tensor("x0", x0, ndim=2)
    times = check_tensor("times", torch.as_tensor(times, dtype=x0.dtype, device=x0.device), ndim=1)
    if times.numel() < 2 or not bool((times.diff() > 0).all()):
        raise ValueError("times: expected at least two strictly increasing times")
    dt = check_positive("dt", dt)
    sde = ReducedSDE(model, n_samples, seed)
    brownian = torchsde.BrownianInterval(t0=float(times[0]), t1=float(times[-1]), size=tuple(x0.shape), dtype=x0.dtype,
                                         device=x0.device, entropy=seed)
    with torch.no_grad():
        path = torchsde.sdeint(sde, x0, times, bm=brownian, method="euler", dt=dt)  # (L, M, d)
    meta = {"model": type(model).__name__, "seed": seed, "dt": dt}
    return Trajectories(path.permute(1, 0, 2).unsqueeze(2), times, meta)


# -- pretrained -------------------------------------------------------------------------------------------
def build_pretrained(payload: Dict, manifest: Dict) -> nn.Module:
    """Builder for :mod:`torchmf.pretrained`: rebuild the model class named in the payload and load its weights."""
    from .variational import VariationalAveragedDrift

    classes = {"FlowAveragedDrift": FlowAveragedDrift, "NeuralDrift": NeuralDrift,
               "VariationalAveragedDrift": VariationalAveragedDrift}
    kind = payload.get("class") if isinstance(payload, dict) else None
    if kind not in classes or "state_dict" not in payload or "config" not in payload:
        raise ValueError(f"payload: expected an averaged-dynamics checkpoint with class in {sorted(classes)}, "
                         f"but got {kind!r}")
    model = classes[kind](**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model
