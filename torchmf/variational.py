r"""Variational posterior over the slow-model parameters of the averaged dynamics.

:math:`q_\psi(\vartheta)`, :math:`\vartheta = (\theta, \log\sigma)`, is a normalizing flow
(:func:`torchmf.flows.posterior_flow`). With the fast-law flow :math:`q_\phi` point-estimated,
training maximizes

.. math:: \mathrm{ELBO}(\psi, \phi) = E_{q_\psi}\big[\log p(\text{path}\mid\vartheta,\phi) + \log p(\vartheta)
          - \log q_\psi(\vartheta)\big]

(reparameterized samples, the path log-likelihood summed over all ``n_transitions`` and
estimated on a minibatch), minus ``penalty_weight`` times the stationarity penalty on
:math:`q_\phi`. The prior is independent Gaussian: :math:`\theta_i \sim N(0, s_\theta^2)`,
:math:`\log\sigma_i \sim N(0, s_\sigma^2)`. Posterior samples of :math:`\vartheta` give credible
bands for :math:`F(x)` and for predicted paths.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ._validation import check_int, check_positive, check_tensor
from .averaging import FlowAveragedDrift, PathStatistics, em_negative_log_likelihood
from .flows import posterior_flow

__all__ = ["VariationalAveragedDrift"]


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
        self.model.set_data_range(x)

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

    def credible_band(self, x: torch.Tensor, level: float = 0.9, n_parameter_samples: int = 200,
                      n_samples: int = 512, generator: Optional[torch.Generator] = None):
        """Pointwise ``level`` credible band of :math:`F` at ``x (B, d)``: lower, median, upper, each ``(B, d)``."""
        x = check_tensor("x", x, ndim=2, last_dim=self.dim)
        if not 0 < level < 1:
            raise ValueError(f"level: expected a number in (0, 1), but got {level}")
        theta, _, _ = self.sample_parameters(n_parameter_samples, generator)
        y = self.model.sample_fast(x, n_samples, generator)
        values = self.model.drift_samples(x, y, theta).mean(-2)  # (T, B, d)
        tail = (1 - level) / 2
        quantiles = torch.quantile(values, torch.tensor([tail, 0.5, 1 - tail], dtype=values.dtype,
                                                        device=values.device), dim=0)
        return quantiles[0], quantiles[1], quantiles[2]

    def credible_intervals(self, level: float = 0.9, n_parameter_samples: int = 4000,
                           generator: Optional[torch.Generator] = None):
        """Equal-tailed ``level`` intervals of every parameter (``parameter_names`` order): lower, upper ``(P + d,)``."""
        theta, log_sigma, _ = self.sample_parameters(n_parameter_samples, generator)
        values = torch.cat((theta, log_sigma), dim=-1)
        tail = (1 - level) / 2
        bounds = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype, device=values.device), dim=0)
        return bounds[0], bounds[1]
