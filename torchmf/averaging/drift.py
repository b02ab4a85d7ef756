r"""The averaged drift models: :class:`FlowAveragedDrift` (:math:`F(x) = E_{q_\phi(y|x)} f_\theta(x, y)`,
``density="flow"`` or ``"gaussian"``), the black-box baseline :class:`NeuralDrift`, and the
stationarity penalty's test functions :class:`TestFunctions` with the fast generator applied to
them, :func:`generator_applied`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.func import jvp

from .._validation import check_choice, check_int, check_positive, check_tensor
from .fast_slow_system import fast_system
from .flows import ConditionalGaussian, conditional_spline_flow
from .likelihood import em_negative_log_likelihood, fast_base_noise

__all__ = ["FlowAveragedDrift", "NeuralDrift", "TestFunctions", "generator_applied", "DENSITIES"]

DENSITIES = ("flow", "gaussian")


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
        hidden, layers, bins, tail_bound, scale: size of :math:`q_\phi` (see :mod:`torchmf.averaging.flows`).
        n_samples: Monte-Carlo samples of ``y`` per ``x`` for :math:`F` (even, split in two halves).
        theta_init: initial :math:`\theta` ``(P,)`` (default ones); ``sigma_init``: initial slow noise.
        n_fourier, test_length, seed, test_kind, test_degree: the test-function family of the
            stationarity penalty (``"fourier"`` with powers up to ``test_degree``, ``"bumps"`` --
            better for multimodal fast laws -- or ``"auto"``).
        normalize_penalty: weigh each test function by its inverse Monte-Carlo variance (see
            :meth:`stationarity_penalty`).
        flow_affine: ``"linear"`` (location and spread affine in ``x`` plus an MLP) or ``"made"``
            (the first session's flow, see :func:`torchmf.averaging.flows.conditional_spline_flow`).

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
