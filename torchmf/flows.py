"""Density models used by the averaging method, built from nflows components.

* :func:`conditional_spline_flow` -- :math:`q_\\phi(y \\mid x)`, a conditional neural-spline flow
  (context = the slow state ``x``): the fast invariant law :math:`\\rho_x`.
* :class:`ConditionalGaussian` -- the Gaussian closure :math:`N(\\mu(x), \\mathrm{diag}\\, s(x)^2)`,
  the same interface with a fixed unimodal shape.
* :func:`posterior_flow` -- :math:`q_\\psi(\\theta)`, an unconditional affine-autoregressive flow
  over the model parameters (variational posterior).

Every model here exposes ``sample_from_noise(noise, context)`` (reparameterized: gradients
reach the parameters through the samples) and ``log_prob(y, context)``. Drawing the base noise
outside the flow keeps randomness under an explicit ``torch.Generator``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (CompositeTransform, InverseTransform, MaskedAffineAutoregressiveTransform,
                               MaskedPiecewiseRationalQuadraticAutoregressiveTransform, PointwiseAffineTransform,
                               ReversePermutation)
from torch import nn

from ._validation import check_int, check_positive

__all__ = ["ConditionalFlow", "ConditionalGaussian", "conditional_spline_flow", "posterior_flow"]


class ConditionalFlow(nn.Module):
    """Wrap an nflows :class:`~nflows.flows.Flow` with the sampling interface of this module.

    The transforms are written in the noise-to-sample direction as inverses, so that drawing a
    sample is one forward pass of each autoregressive network (inverse autoregressive flow).
    """

    def __init__(self, flow: Flow, features: int):
        super().__init__()
        self.flow = flow
        self.features = features

    def sample_from_noise(self, noise: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Samples ``(B, S, k)`` from base noise ``(B, S, k)`` and context ``(B, c)`` (or ``(S, k)`` without context)."""
        if context is None:
            samples, _ = self.flow._transform.inverse(noise)
            return samples
        batch, count = noise.shape[:2]
        repeated = context.unsqueeze(1).expand(batch, count, context.shape[-1]).reshape(batch * count, -1)
        samples, _ = self.flow._transform.inverse(noise.reshape(batch * count, -1), context=repeated)
        return samples.reshape(batch, count, -1)

    def sample_and_log_prob_from_noise(self, noise: torch.Tensor):
        """Unconditional samples ``(S, k)`` and their log densities ``(S,)`` from base noise ``(S, k)``."""
        samples, log_det = self.flow._transform.inverse(noise)
        return samples, self.flow._distribution.log_prob(noise) - log_det

    def log_prob(self, y: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Log density of ``y (B, k)`` given ``context (B, c)``: ``(B,)``."""
        return self.flow.log_prob(y, context=context)


def conditional_spline_flow(features: int, context_features: int, hidden: int = 32, layers: int = 2,
                            bins: int = 8, tail_bound: float = 4.0, scale: float = 1.5) -> ConditionalFlow:
    """:math:`q_\\phi(y \\mid x)` over ``y (k,)`` given ``x (c,)``.

    Noise-to-sample: ``layers`` rational-quadratic spline layers on ``[-tail_bound, tail_bound]``
    (linear tails; shape, e.g. several modes), alternating feature order, then a conditional
    affine layer (location and contraction), then a fixed dilation by ``scale`` (the nflows
    affine layer can only contract, so the fixed dilation sets the widest reachable law).
    """
    features = check_int("features", features, minimum=1)
    context_features = check_int("context_features", context_features, minimum=1)
    check_int("layers", layers, minimum=1)
    scale = check_positive("scale", scale)
    # written in the data-to-noise order nflows expects; sampling runs it backwards
    transforms = [PointwiseAffineTransform(shift=0.0, scale=1.0 / scale),
                  InverseTransform(MaskedAffineAutoregressiveTransform(features, hidden, context_features=context_features))]
    for index in range(layers):
        if index and features > 1:
            transforms.append(ReversePermutation(features))
        transforms.append(InverseTransform(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features, hidden, context_features=context_features, num_bins=bins, tails="linear",
            tail_bound=float(tail_bound))))
    _start_near_identity(transforms)
    return ConditionalFlow(Flow(CompositeTransform(transforms), StandardNormal([features])), features)


def _start_near_identity(transforms) -> None:
    # zero output layers: every x starts from the same centred law, so no x begins far from its
    # fast law (an offset start drives the stationarity penalty towards a collapsed, saturated flow)
    for transform in transforms:
        inner = getattr(transform, "_transform", transform)
        network = getattr(inner, "autoregressive_net", None)
        if network is not None:
            nn.init.zeros_(network.final_layer.weight)
            nn.init.zeros_(network.final_layer.bias)


class ConditionalGaussian(nn.Module):
    """Gaussian closure :math:`q(y \\mid x) = N(\\mu(x), \\mathrm{diag}\\, s(x)^2)` with an MLP ``x -> (mu, log s)``."""

    def __init__(self, features: int, context_features: int, hidden: int = 32, scale: float = 1.0):
        super().__init__()
        self.features = check_int("features", features, minimum=1)
        check_int("context_features", context_features, minimum=1)
        self.net = nn.Sequential(nn.Linear(context_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * features))
        self.initial_log_scale = float(torch.log(torch.tensor(check_positive("scale", scale))))

    def _location_log_scale(self, context):
        location, log_scale = self.net(context).chunk(2, dim=-1)
        return location, log_scale + self.initial_log_scale

    def sample_from_noise(self, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Samples ``(B, S, k)`` from noise ``(B, S, k)`` and context ``(B, c)``."""
        location, log_scale = self._location_log_scale(context)
        return location.unsqueeze(1) + log_scale.exp().unsqueeze(1) * noise

    def log_prob(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Log density of ``y (B, k)`` given ``context (B, c)``: ``(B,)``."""
        location, log_scale = self._location_log_scale(context)
        standardized = (y - location) / log_scale.exp()
        return (-0.5 * standardized**2 - log_scale - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)


def posterior_flow(features: int, location: Sequence[float], scale: Sequence[float], hidden: int = 32,
                   layers: int = 2) -> ConditionalFlow:
    """:math:`q_\\psi(\\theta)` over ``theta (P,)``: affine autoregressive layers (noise-to-sample
    one pass each) around a fixed centring ``location + scale * u`` (the initial guess)."""
    features = check_int("features", features, minimum=1)
    location = torch.as_tensor(location, dtype=torch.get_default_dtype()).reshape(features)
    scale = torch.as_tensor(scale, dtype=torch.get_default_dtype()).reshape(features)
    if not bool((scale > 0).all()):
        raise ValueError(f"scale: expected positive numbers, but got {scale.tolist()}")
    # data-to-noise order: centring first, then the (inverted) autoregressive layers
    transforms = [PointwiseAffineTransform(shift=-location / scale, scale=1.0 / scale)]
    for index in range(layers):
        if index and features > 1:
            transforms.append(ReversePermutation(features))
        transforms.append(InverseTransform(MaskedAffineAutoregressiveTransform(features, hidden)))
    _start_near_identity(transforms)
    return ConditionalFlow(Flow(CompositeTransform(transforms), StandardNormal([features])), features)
