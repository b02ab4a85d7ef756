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

import math
from typing import Optional, Sequence

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (CompositeTransform, InverseTransform, MaskedAffineAutoregressiveTransform,
                               MaskedPiecewiseRationalQuadraticAutoregressiveTransform, PointwiseAffineTransform,
                               ReversePermutation)
from nflows.transforms.base import Transform
from torch import nn

from .._validation import check_choice, check_int, check_positive

__all__ = ["ConditionalAffine", "ConditionalFlow", "ConditionalGaussian", "conditional_spline_flow", "posterior_flow"]


class ConditionalAffine(Transform):
    """Conditional elementwise affine map (nflows :class:`~nflows.transforms.Transform`), data-to-noise
    ``z = (y - shift(x)) / exp(log_scale(x))``.

    ``(shift, log_scale)(x) = A x + c + MLP(x)``: the linear part makes any law whose location and
    log-spread are affine in ``x`` (e.g. an OU fast law) exactly representable, the MLP (last
    layer zero, so it starts at nothing) bends them. Starts at ``N(0, initial_scale^2)`` for all
    ``x``.
    """

    def __init__(self, features: int, context_features: int, hidden: int = 32, initial_scale: float = 1.0):
        super().__init__()
        self.features = features
        self.linear = nn.Linear(context_features, 2 * features)
        self.net = nn.Sequential(nn.Linear(context_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * features))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        with torch.no_grad():
            self.linear.bias.copy_(torch.cat((torch.zeros(features), torch.full((features,), math.log(initial_scale)))))

    def shift_log_scale(self, context: torch.Tensor):
        """``shift, log_scale``, each ``(B, k)``, for ``context (B, c)``."""
        return (self.linear(context) + self.net(context)).chunk(2, dim=-1)

    def forward(self, inputs, context=None):
        shift, log_scale = self.shift_log_scale(context)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(-1)

    def inverse(self, inputs, context=None):
        shift, log_scale = self.shift_log_scale(context)
        return inputs * torch.exp(log_scale) + shift, log_scale.sum(-1)


class ConditionalFlow(nn.Module):
    """Wrap an nflows :class:`~nflows.flows.Flow` with the sampling interface of this module.

    The transforms are written in the noise-to-sample direction as inverses, so that drawing a
    sample is one forward pass of each autoregressive network (inverse autoregressive flow).
    With one feature the networks see the context only, so sampling ``S`` draws per context
    evaluates each network once per context row, not once per draw.
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
        if self.features == 1:
            return self._sample_one_feature(noise, context)
        batch, count = noise.shape[:2]
        repeated = context.unsqueeze(1).expand(batch, count, context.shape[-1]).reshape(batch * count, -1)
        samples, _ = self.flow._transform.inverse(noise.reshape(batch * count, -1), context=repeated)
        return samples.reshape(batch, count, -1)

    def _sample_one_feature(self, noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # same maps as flow._transform.inverse, with each network's output computed per context
        # row and shared by that row's S draws (for k = 1 a masked network ignores its input)
        batch, count = noise.shape[:2]
        values = noise.reshape(batch * count, 1)
        for transform in reversed(list(self.flow._transform._transforms)):
            if isinstance(transform, ConditionalAffine):
                shift, log_scale = transform.shift_log_scale(context)
                values = (values.reshape(batch, count, 1) * log_scale.exp().unsqueeze(1) + shift.unsqueeze(1))
                values = values.reshape(batch * count, 1)
            elif isinstance(transform, InverseTransform) and hasattr(transform._transform, "autoregressive_net"):
                inner = transform._transform
                params = inner.autoregressive_net(context.new_zeros((batch, 1)), context)
                params = params.repeat_interleave(count, dim=0)  # a copy: nflows edits its params in place
                values, _ = inner._elementwise_forward(values, params)
            else:
                values, _ = transform.inverse(values)
        return values.reshape(batch, count, 1)

    def sample_and_log_prob_from_noise(self, noise: torch.Tensor):
        """Unconditional samples ``(S, k)`` and their log densities ``(S,)`` from base noise ``(S, k)``."""
        samples, log_det = self.flow._transform.inverse(noise)
        return samples, self.flow._distribution.log_prob(noise) - log_det

    def log_prob(self, y: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Log density of ``y (B, k)`` given ``context (B, c)``: ``(B,)``."""
        return self.flow.log_prob(y, context=context)


def conditional_spline_flow(features: int, context_features: int, hidden: int = 32, layers: int = 2,
                            bins: int = 8, tail_bound: float = 4.0, scale: float = 1.5,
                            affine: str = "linear") -> ConditionalFlow:
    """:math:`q_\\phi(y \\mid x)` over ``y (k,)`` given ``x (c,)``.

    Noise-to-sample: ``layers`` rational-quadratic spline layers on ``[-tail_bound, tail_bound]``
    (linear tails; shape, e.g. several modes), alternating feature order, then a
    :class:`ConditionalAffine` layer (location and spread, affine in ``x`` plus an MLP). Every
    layer starts as the identity, so the flow starts as ``N(0, scale^2)`` at every ``x`` and a
    Gaussian law with affine moments is representable from the first step.

    ``affine="made"`` is the first session's structure, kept for the bimodal tilted-well runs whose
    figures were tuned on it: an nflows masked (MADE) affine layer followed by a fixed dilation by
    ``scale``, spline knot slopes starting at ``softplus(0)`` (a slightly wiggly start).
    """
    features = check_int("features", features, minimum=1)
    context_features = check_int("context_features", context_features, minimum=1)
    check_int("layers", layers, minimum=1)
    scale = check_positive("scale", scale)
    # written in the data-to-noise order nflows expects; sampling runs it backwards
    affine = check_choice("affine", affine, ("linear", "made"))
    if affine == "linear":
        transforms = [ConditionalAffine(features, context_features, hidden, scale)]
    else:
        transforms = [PointwiseAffineTransform(shift=0.0, scale=1.0 / scale),
                      InverseTransform(MaskedAffineAutoregressiveTransform(features, hidden,
                                                                           context_features=context_features))]
    for index in range(layers):
        if index and features > 1:
            transforms.append(ReversePermutation(features))
        transforms.append(InverseTransform(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features, hidden, context_features=context_features, num_bins=bins, tails="linear",
            tail_bound=float(tail_bound))))
    _start_near_identity(transforms, unit_slopes=affine == "linear")
    return ConditionalFlow(Flow(CompositeTransform(transforms), StandardNormal([features])), features)


def _start_near_identity(transforms, unit_slopes: bool = True) -> None:
    # zero output layers: every x starts from the same centred law, so no x begins far from its
    # fast law (an offset start drives the stationarity penalty towards a collapsed, saturated flow);
    # spline knot slopes start at exactly 1, which makes each spline layer the identity
    for transform in transforms:
        inner = getattr(transform, "_transform", transform)
        network = getattr(inner, "autoregressive_net", None)
        if network is None:
            continue
        nn.init.zeros_(network.final_layer.weight)
        nn.init.zeros_(network.final_layer.bias)
        bins = getattr(inner, "num_bins", None)
        if unit_slopes and bins is not None and getattr(inner, "tails", None) == "linear":
            unit_slope = math.log(math.expm1(1 - inner.min_derivative))
            with torch.no_grad():
                network.final_layer.bias.view(network.final_layer.bias.numel() // (3 * bins - 1), -1)[:, 2 * bins:] = unit_slope


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
        return (-0.5 * standardized**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


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
