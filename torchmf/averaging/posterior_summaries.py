r"""Summaries of the variational posterior: what :class:`~torchmf.averaging.variational.VariationalAveragedDrift`
states about :math:`F(x)` and about its parameters from posterior draws.

* :func:`credible_band` -- the pointwise credible band of :math:`F` (:func:`drifts_for_draws`:
  :math:`F_\theta(x)` for every draw from one precise set of fast samples per point).
* :func:`posterior_samples` -- draws of :math:`(\theta, \log\sigma)`, the slow noise corrected for
  the fast fluctuations and the Euler step where the correction applies (draws without an
  admissible sigma dropped and counted).
* :func:`credible_intervals` -- equal-tailed intervals of every parameter.

Each takes the model first; the model's methods of the same names call them (their docstrings
give the arguments). Shapes: ``x (B, d)``, ``theta (T, P)``, ``log_sigma (T, d)``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from .._validation import check_int, check_tensor

__all__ = ["credible_band", "drifts_for_draws", "posterior_samples", "credible_intervals"]


def credible_band(model, x: torch.Tensor, level: float = 0.9, n_parameter_samples: int = 1000,
                  n_samples: Optional[int] = None, generator: Optional[torch.Generator] = None, chunk: int = 64):
    """Pointwise ``level`` credible band of :math:`F` at ``x (B, d)``: lower, median, upper, each ``(B, d)``
    (see :meth:`VariationalAveragedDrift.credible_band`)."""
    x = check_tensor("x", x, ndim=2, last_dim=model.dim)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), but got {level}")
    theta, _, _ = model.sample_parameters(check_int("n_parameter_samples", n_parameter_samples, minimum=2),
                                          generator)
    if n_samples is not None:
        check_int("n_samples", n_samples, minimum=2)
    values = model._drifts_for_draws(x, theta, n_samples, generator, check_int("chunk", chunk, minimum=1))
    tail = (1 - level) / 2
    quantiles = torch.quantile(values, torch.tensor([tail, 0.5, 1 - tail], dtype=values.dtype,
                                                    device=values.device), dim=0)
    return quantiles[0], quantiles[1], quantiles[2]


def drifts_for_draws(model, x, theta, n_samples, generator, chunk):
    """:math:`F_\\theta(x)` for every draw ``theta (T, P)`` from one set of fast samples per point: ``(T, B, d)``.

    A slow drift linear in theta (the system's ``drift_features``) needs :math:`E_q[\\Phi]` once per
    point: ``n_samples`` (default 2^17) stratified draws in one pass, points taken in groups of
    about 2^20 draws (memory). One large stratified pass, not many small ones: its error falls
    like ``S^-1.5`` for a smooth integrand, and with 2^16 draws in 16 passes the error of
    :math:`E_q[y^3]` (about 0.0025 on ``averaged-cubic``) made the band's median visibly rough at a
    grid spacing of 0.02. Otherwise ``n_samples`` (default 4096) draws per point are shared by
    every theta, ``chunk`` draws of theta at a time.
    """
    system = model.model.system
    try:
        system.drift_features(x[:1].unsqueeze(-2), x.new_zeros(1, 1, system.fast_dim))
        linear = True
    except NotImplementedError:
        linear = False
    if linear:
        count = n_samples or 2**17
        group = max(1, 2**20 // count)
        features = torch.cat([system.drift_features(part.unsqueeze(-2), model.model.sample_fast(
            part, count, generator, stratified=count % 2 == 0)).mean(-3) for part in x.split(group)])  # (B, d, P)
        return torch.einsum("bdp,tp->tbd", features, theta.to(features))
    count = n_samples or 4096
    y = model.model.sample_fast(x, count, generator, stratified=count % 2 == 0)
    return torch.cat([model.model.drift_samples(x, y, part).mean(-2) for part in theta.split(chunk)])


def posterior_samples(model, n_samples: int, generator: Optional[torch.Generator] = None,
                      corrected_sigma: Optional[bool] = None):
    """Posterior draws ``theta (n, P)``, ``log_sigma (n, d)`` without gradient, sigma corrected where
    asked (default: :attr:`corrects_sigma`); sets ``model.rejected_draws`` (see
    :meth:`VariationalAveragedDrift.posterior_samples`)."""
    theta, log_sigma, _ = model.sample_parameters(n_samples, generator)
    theta, log_sigma = theta.detach(), log_sigma.detach()
    if corrected_sigma is None:
        corrected_sigma = model.corrects_sigma
    model.rejected_draws = 0
    if corrected_sigma:
        log_sigma = model.corrected_log_sigma(theta, log_sigma)
        # draws with no admissible sigma have zero likelihood under the corrected model: the
        # posterior restricted to sigma^2 > 0 drops them (counted; an error when they are many)
        valid = torch.isfinite(log_sigma).all(-1)
        model.rejected_draws = int((~valid).sum())
        if model.rejected_draws > 0.05 * n_samples:
            raise ValueError(f"theta: {model.rejected_draws} of {n_samples} posterior draws have fast fluctuations "
                             "larger than their effective slow noise; the sigma correction does not apply")
        if model.rejected_draws:
            # stacklevel 3: the warning points at the caller of the model's posterior_samples method
            warnings.warn(f"posterior_samples: dropped {model.rejected_draws} of {n_samples} draws whose fast "
                          "fluctuations exceed their effective slow noise (no admissible sigma)", stacklevel=3)
        theta, log_sigma = theta[valid], log_sigma[valid]
    return theta, log_sigma


def credible_intervals(model, level: float = 0.9, n_parameter_samples: int = 4000,
                       generator: Optional[torch.Generator] = None, corrected_sigma: Optional[bool] = None):
    """Equal-tailed ``level`` intervals of every parameter: lower, upper ``(P + d,)`` (see
    :meth:`VariationalAveragedDrift.credible_intervals`)."""
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), but got {level}")
    theta, log_sigma = model.posterior_samples(n_parameter_samples, generator, corrected_sigma)
    values = torch.cat((theta, log_sigma), dim=-1)
    tail = (1 - level) / 2
    bounds = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype, device=values.device), dim=0)
    return bounds[0], bounds[1]
