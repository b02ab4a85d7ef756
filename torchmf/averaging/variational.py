r"""Variational posterior over the slow-model parameters of the averaged dynamics.

:math:`q_\psi(\vartheta)`, :math:`\vartheta = (\theta, \log\sigma)`, is a normalizing flow
(:func:`torchmf.averaging.flows.posterior_flow`). With the fast-law flow :math:`q_\phi` point-estimated,
training maximizes

.. math:: \mathrm{ELBO}(\psi, \phi) = E_{q_\psi}\big[\log p(\text{path}\mid\vartheta,\phi) + \log p(\vartheta)
          - \log q_\psi(\vartheta)\big]

(reparameterized samples, the path log-likelihood summed over all ``n_transitions`` and
estimated on a minibatch), minus ``penalty_weight`` times the stationarity penalty on
:math:`q_\phi`. The prior is independent Gaussian: :math:`\theta_i \sim N(0, s_\theta^2)`,
:math:`\log\sigma_i \sim N(0, s_\sigma^2)`. Posterior samples of :math:`\vartheta` give credible
bands for :math:`F(x)` and for predicted paths.

Two corrections make the posterior's statements calibrated (issue 14):

* :meth:`VariationalAveragedDrift.credible_band` computes :math:`E_{q_\phi}` once per grid point
  from many stratified fast samples and combines it with every posterior draw; the earlier
  version reused one plain set of 512 draws, whose Monte-Carlo noise (sd of F about 0.1 on
  ``fastslow_cubic``) was larger than the band itself.
* The likelihood's ``sigma`` is the *effective* noise of the observed increments: at finite
  ``eps`` the fast fluctuations of :math:`f_\theta(x, Y) - F(x)` add :math:`\varepsilon D_\theta(x)`
  per unit time (:meth:`~torchmf.systems.fastslow.FastSlowSystem.fluctuation_variance`), and an
  Euler step of length :math:`\Delta t` sees :math:`\sigma^2(1 + F'(x)\Delta t)`. The corrected
  estimator maps every posterior draw to
  :math:`\sigma^2 = (\sigma_\mathrm{eff}^2 - \overline{\varepsilon D_\theta}) / \overline{(1 + F_\theta'\Delta t)}`,
  averages over the observed path's occupation histogram (one slow and one fast dimension).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .._validation import check_int, check_positive
from . import posterior_summaries
from .drift import FlowAveragedDrift
from .flows import posterior_flow
from .likelihood import PathStatistics, em_negative_log_likelihood, fast_base_noise

__all__ = ["VariationalAveragedDrift", "band_scores"]

OCCUPATION_BINS = 64


class VariationalAveragedDrift(nn.Module):
    """Averaged drift with a flow posterior over ``(theta, log sigma)``.

    Arguments:
        prior_theta_std, prior_log_sigma_std: prior standard deviations.
        posterior_hidden, posterior_layers: size of :math:`q_\\psi`.
        posterior_init_std: initial posterior spread around ``(theta_init, log sigma_init)``.
        n_parameter_samples: posterior samples per training step.
        everything else: :class:`~torchmf.averaging.FlowAveragedDrift` arguments.

    Shapes: ``drift(x)``: ``x (..., d) -> (..., d)`` at the posterior median;
    ``credible_band(x)``: three ``(B, d)`` tensors; ``sample_parameters(n)``: ``theta (n, P)``,
    ``log_sigma (n, d)``, ``log_q (n,)``.
    """

    def __init__(self, prior_theta_std: float = 10.0, prior_log_sigma_std: float = 2.0, posterior_hidden: int = 16,
                 posterior_layers: int = 2, posterior_init_std: float = 0.1, n_parameter_samples: int = 8, **model_kwargs):
        super().__init__()
        self.model = FlowAveragedDrift(**model_kwargs)
        self.model.theta.requires_grad_(False)  # the posterior replaces the point estimates
        self.model.log_sigma.requires_grad_(False)
        self.n_parameter_samples = check_int("n_parameter_samples", n_parameter_samples, minimum=2)
        self.prior_theta_std = check_positive("prior_theta_std", prior_theta_std)
        self.prior_log_sigma_std = check_positive("prior_log_sigma_std", prior_log_sigma_std)
        self.n_theta = len(self.model.parameter_names)
        location = torch.cat((self.model.theta.detach(), self.model.log_sigma.detach()))
        with torch.random.fork_rng():
            torch.manual_seed(model_kwargs.get("seed", 0) + 1)
            self.posterior = posterior_flow(location.numel(), location, [check_positive(
                "posterior_init_std", posterior_init_std)] * location.numel(), posterior_hidden, posterior_layers)
        # occupation histogram of the training path and its observation step (set_data_range,
        # set_observation_step): what the sigma correction averages over; step 0 = not set
        self.register_buffer("occupation_nodes", torch.zeros(OCCUPATION_BINS, self.dim))
        self.register_buffer("occupation_weights", torch.zeros(OCCUPATION_BINS))
        self.register_buffer("observation_step", torch.zeros(()))
        self.config = dict(model_kwargs, prior_theta_std=prior_theta_std, prior_log_sigma_std=prior_log_sigma_std,
                           posterior_hidden=posterior_hidden, posterior_layers=posterior_layers,
                           posterior_init_std=posterior_init_std, n_parameter_samples=n_parameter_samples)

    # -- delegation ------------------------------------------------------------------------------
    @property
    def system(self):
        return self.model.system

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def parameter_names(self):
        return self.model.parameter_names + [f"log_sigma[{i}]" for i in range(self.dim)]

    def set_data_range(self, x):
        """Record the observed range (scoring, penalty points) and, for one slow dimension, the
        occupation histogram of ``x (n, d)`` used by the sigma correction."""
        self.model.set_data_range(x)
        if self.dim == 1:
            values = x.detach().double().reshape(-1)
            low, high = float(values.min()), float(values.max())
            high = high if high > low else low + 1.0
            counts = torch.histc(values, OCCUPATION_BINS, low, high)
            edges = torch.linspace(low, high, OCCUPATION_BINS + 1, dtype=torch.float64)
            self.occupation_nodes.copy_(((edges[1:] + edges[:-1]) / 2).unsqueeze(-1).to(self.occupation_nodes))
            self.occupation_weights.copy_((counts / counts.sum()).to(self.occupation_weights))

    def set_observation_step(self, step) -> None:
        """The observation time step of the training path (a positive number; its mean if it varies)."""
        step = float(torch.as_tensor(step, dtype=torch.float64).mean())
        if not step > 0:
            raise ValueError(f"step: expected a positive observation time step, but got {step}")
        self.observation_step.fill_(step)

    @property
    def corrects_sigma(self) -> bool:
        """Whether :meth:`corrected_log_sigma` applies: one slow and one fast dimension, a system with a
        fluctuation variance, and the training path's occupation and step recorded."""
        system = self.model.system
        try:
            system.fast_grid(self.occupation_nodes[:1].double(), 3)
            has_quadrature = True
        except NotImplementedError:
            has_quadrature = False
        return (self.dim == 1 and system.fast_dim == 1 and has_quadrature and float(self.observation_step) > 0
                and float(self.occupation_weights.sum()) > 0)

    def corrected_log_sigma(self, theta: torch.Tensor, log_sigma: torch.Tensor, n_samples: int = 256,
                            chunk: int = 250) -> torch.Tensor:
        """Slow-noise draws corrected for fast fluctuations and the Euler step (module docstring):
        ``theta (T, P)``, effective ``log_sigma (T, 1)`` -> ``(T, 1)``.

        ``n_samples`` stratified fast samples per histogram node give :math:`F'_\\theta` (central
        differences). A draw whose fluctuation variance exceeds its effective variance has no
        corrected sigma (zero likelihood under the corrected model): NaN for that draw.
        """
        if not self.corrects_sigma:
            raise ValueError("model: the sigma correction needs one slow and one fast dimension, a system with "
                             "fast_grid, and set_data_range / set_observation_step from the training path")
        nodes, weights = self.occupation_nodes.double(), self.occupation_weights.double()
        shifted = self._shifted_fast_samples(n_samples)
        corrected = []
        for start in range(0, theta.shape[0], chunk):
            part = theta[start:start + chunk]
            extra = (self.model.system.fluctuation_variance(nodes, part, n_points=201)  # 201: 1e-4 relative
                     * weights[None, :, None]).sum(1)  # (t, 1)
            slope = (self._drift_slope(part, shifted) * weights[None, :, None]).sum(1)  # (t, 1)
            effective = (2 * log_sigma[start:start + chunk].double()).exp()
            variance = (effective - extra) / (1 + slope * float(self.observation_step))
            # a draw whose fast fluctuations alone exceed its observed noise has no sigma: NaN marks it
            # (posterior_samples drops such draws and says how many)
            corrected.append(torch.where(variance > 0, 0.5 * variance.clamp_min(1e-300).log(), float("nan")))
        return torch.cat(corrected).to(log_sigma.dtype)

    def _shifted_fast_samples(self, n_samples: int, step: float = 1e-2):
        """Fast samples at the occupation nodes shifted by ``-step`` and ``+step``, from common stratified
        base noise (so that their difference is smooth in ``x``): ``(points, y)`` pairs, ``y (nodes, S, 1)``."""
        nodes = self.occupation_nodes
        generator = torch.Generator(device=nodes.device).manual_seed(0)
        noise = fast_base_noise((nodes.shape[0], n_samples, 1), generator, nodes, stratified=True)
        return [(points, self.model.density.sample_from_noise(noise, points)) for points in (nodes - step, nodes + step)]

    def _drift_slope(self, theta: torch.Tensor, shifted) -> torch.Tensor:
        """:math:`\\partial_x F_\\theta` at the occupation nodes by central differences (``shifted`` from
        :meth:`_shifted_fast_samples`): ``theta (t, P)`` -> ``(t, nodes, 1)`` (float64)."""
        (low, y_low), (high, y_high) = shifted
        def mean_drift(points, y):
            return self.model.drift_samples(points, y, theta.to(points)).mean(-2).double()
        return (mean_drift(high, y_high) - mean_drift(low, y_low)) / float(high[0, 0] - low[0, 0])

    def quantile_grid(self, n_points: int = 200):
        return self.model.quantile_grid(n_points)

    def sample_fast(self, x, n_samples, generator=None):
        return self.model.sample_fast(x, n_samples, generator)

    def stationarity_penalty(self, x):
        return self.model.stationarity_penalty(x)

    def penalty_points(self, n_points, generator=None):
        return self.model.penalty_points(n_points, generator)

    # -- posterior -----------------------------------------------------------------------------------
    def sample_parameters(self, n_samples: int, generator: Optional[torch.Generator] = None):
        """Reparameterized posterior samples: ``theta (n, P)``, ``log_sigma (n, d)``, ``log_q (n,)``."""
        reference = self.model.data_range
        noise = torch.randn((n_samples, self.n_theta + self.dim), generator=generator, device=reference.device,
                            dtype=reference.dtype)
        values, log_q = self.posterior.sample_and_log_prob_from_noise(noise)
        return values[:, :self.n_theta], values[:, self.n_theta:], log_q

    def median_parameters(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The image of the base distribution's centre: ``theta (P,)``, ``log_sigma (d,)``."""
        zero = self.model.data_range.new_zeros((1, self.n_theta + self.dim))
        values, _ = self.posterior.sample_and_log_prob_from_noise(zero)
        return values[0, :self.n_theta], values[0, self.n_theta:]

    @property
    def sigma(self) -> torch.Tensor:
        """Slow diffusion ``(d,)`` at the posterior median."""
        return self.median_parameters()[1].exp()

    def log_prior(self, theta: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """Log prior density of ``theta (n, P)``, ``log_sigma (n, d)``: ``(n,)``."""
        def gaussian(value, std):
            return (-0.5 * (value / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return gaussian(theta, self.prior_theta_std) + gaussian(log_sigma, self.prior_log_sigma_std)

    def negative_elbo(self, x: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor, n_transitions: int,
                      statistics: Optional[PathStatistics] = None) -> torch.Tensor:
        """:math:`-\\mathrm{ELBO}/n` on a minibatch ``x, dx (B, d)``, ``dt (B,)`` of ``n_transitions`` (scalar).

        The log-likelihood term is the full path's: the mean per transition times ``n_transitions``
        (an unbiased estimate from the minibatch, or exact from ``statistics``, the
        :class:`~torchmf.averaging.PathStatistics` of the whole path, when given; then ``x, dx, dt``
        are not used and ``n_transitions`` is the statistics' count).
        """
        theta, log_sigma, log_q = self.sample_parameters(self.n_parameter_samples)
        if statistics is not None:
            drift_a, drift_b = self.model.drift_pair(statistics.nodes.to(theta), theta)  # (T, G, 1)
            nll = statistics.mean_nll(drift_a, drift_b, log_sigma.exp())  # (T,)
            n_transitions = statistics.count
        else:
            drift_a, drift_b = self.model.drift_pair(x, theta)  # (T, B, d), samples of y shared across theta
            nll = em_negative_log_likelihood(dx, dt, drift_a, drift_b, log_sigma.exp().unsqueeze(1)).mean(-1)  # (T,)
        log_likelihood = -nll * n_transitions
        elbo = (log_likelihood + self.log_prior(theta, log_sigma) - log_q).mean()
        return -elbo / n_transitions

    def path_nll(self, x, dx, dt) -> torch.Tensor:
        """Mean EM negative log-likelihood per transition at the posterior median (scalar)."""
        theta, log_sigma = self.median_parameters()
        drift_a, drift_b = self.model.drift_pair(x, theta.unsqueeze(0))
        return em_negative_log_likelihood(dx, dt, drift_a[0], drift_b[0], log_sigma.exp()).mean()

    # -- predictions ---------------------------------------------------------------------------------
    def drift(self, x: torch.Tensor, n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None,
              theta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:math:`F(x)` at the posterior median (or at ``theta``): ``x (..., d) -> (..., d)``."""
        if theta is None:
            theta = self.median_parameters()[0]
        return self.model.drift(x, n_samples, generator, theta)

    forward = drift

    def credible_band(self, x: torch.Tensor, level: float = 0.9, n_parameter_samples: int = 1000,
                      n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None, chunk: int = 64):
        """Pointwise ``level`` credible band of :math:`F` at ``x (B, d)``: lower, median, upper, each ``(B, d)``.

        One set of ``n_samples`` stratified fast draws per point (:math:`E_{q_\phi}` computed once,
        precisely: its Monte-Carlo error must be small against the band; default 2^17 for a slow
        drift linear in theta, 4096 otherwise, see :meth:`_drifts_for_draws`) is combined with each
        of ``n_parameter_samples`` posterior draws of theta, ``chunk`` draws at a time (memory).
        """
        return posterior_summaries.credible_band(self, x, level, n_parameter_samples, n_samples, generator, chunk)

    def _drifts_for_draws(self, x, theta, n_samples, generator, chunk):
        """:math:`F_\\theta(x)` for every draw ``theta (T, P)``: ``(T, B, d)``
        (:func:`~torchmf.averaging.posterior_summaries.drifts_for_draws`)."""
        return posterior_summaries.drifts_for_draws(self, x, theta, n_samples, generator, chunk)

    def posterior_samples(self, n_samples: int, generator: Optional[torch.Generator] = None,
                          corrected_sigma: Optional[bool] = None):
        """Posterior draws ``theta (n, P)``, ``log_sigma (n, d)`` (no gradient); ``corrected_sigma``
        (default: whenever :attr:`corrects_sigma`) maps the effective slow noise to the model's sigma
        (:meth:`corrected_log_sigma`), dropping draws without an admissible sigma (a warning gives the
        count, kept in ``rejected_draws``; more than 5% is a ``ValueError``), so fewer than ``n`` may return."""
        return posterior_summaries.posterior_samples(self, n_samples, generator, corrected_sigma)

    def credible_intervals(self, level: float = 0.9, n_parameter_samples: int = 4000,
                           generator: Optional[torch.Generator] = None, corrected_sigma: Optional[bool] = None):
        """Equal-tailed ``level`` intervals of every parameter (``parameter_names`` order): lower, upper ``(P + d,)``.

        ``log_sigma`` is the corrected one where the correction applies (see :meth:`posterior_samples`).
        """
        return posterior_summaries.credible_intervals(self, level, n_parameter_samples, generator, corrected_sigma)


def band_scores(model: VariationalAveragedDrift, n_points: int = 100, level: float = 0.9, seed: int = 0, **band_kwargs):
    """How the credible band of ``model`` relates to its system's true averaged drift on the 5-95% quantile grid.

    Returns ``inside_fraction`` (grid points whose true :math:`F` lies in the band),
    ``median_relative_l2`` (posterior-median drift against the truth) and
    ``median_roughness_ratio``: :math:`\\sum (\\Delta^2 \\mathrm{median})^2 / \\sum (\\Delta^2 F)^2` over the grid
    (second differences; 1 for a median as smooth as the truth, large for Monte-Carlo jitter), plus
    the grid, band and truth (tensors, ``(n_points, d)``) for figures.
    """
    from ..metrics import relative_error

    with torch.no_grad():
        grid = model.quantile_grid(check_int("n_points", n_points, minimum=5))
        lower, median, upper = model.credible_band(grid, level, generator=torch.Generator(
            device=grid.device).manual_seed(seed), **band_kwargs)
        truth = model.system.averaged_drift(grid.double()).to(median)
    def roughness(values):
        return float((values[2:] - 2 * values[1:-1] + values[:-2]).double().pow(2).sum())
    return {"inside_fraction": float(((truth >= lower) & (truth <= upper)).double().mean()),
            "median_relative_l2": float(relative_error(median.double(), truth.double())),
            "median_roughness_ratio": roughness(median) / roughness(truth),
            "grid": grid, "lower": lower, "median": median, "upper": upper, "truth": truth}
