r"""Local-linear smoothing of a field sampled at particles, and its bandwidth chosen from the data.

:func:`local_linear` evaluates, at each particle :math:`x_i`, the intercept of the weighted
least-squares fit :math:`y_j \approx \beta_0 + \beta_1^\top (x_j - x_i)` with Gaussian weights
:math:`w_{ij} = \exp(-|x_j - x_i|^2 / 2b^2)`. Unlike a kernel average it is unbiased for affine
fields and keeps its order at the edge of the cloud (a wall, a front), where a kernel average is
pulled inwards.

:func:`choose_bandwidth` picks :math:`b` by an unbiased estimate of the smoothed field's mean squared
error that holds for *correlated* noise (transport-map noise is correlated between neighbouring
particles, so leave-one-out cross-validation undersmooths): given the noisy field
:math:`y = v + n` and an independent copy :math:`\tilde n` of its noise (same covariance :math:`C`),

.. math::
    \mathbb E\,\|S_b y - v\|^2 = \mathbb E\,\|S_b y - y\|^2 - \mathbb E\,\|\tilde n\|^2
    + 2\,\mathbb E\,\langle S_b \tilde n, \tilde n\rangle,

because :math:`\mathbb E\langle S n, n\rangle = \operatorname{tr}(S C) = \mathbb E\langle S\tilde n,
\tilde n\rangle`. The minimum is also the estimate's error bar (bias included).

Shapes: points ``(N, d)``, fields ``(N, m)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validation import check_points

__all__ = ["local_linear", "choose_bandwidth", "BANDWIDTH_FRACTIONS"]

#: candidate bandwidths as fractions of the cloud's spread (RMS distance to its mean, per coordinate);
#: ``inf`` is the global affine fit
BANDWIDTH_FRACTIONS = (0.05, 0.1, 0.15, 0.22, 0.33, 0.5, 0.75, 1.1, float("inf"))


def local_linear(points: torch.Tensor, values: torch.Tensor, bandwidth: float,
                 at: Optional[torch.Tensor] = None, chunk: int = 512) -> torch.Tensor:
    """Local-linear fit of ``values (N, m)`` sampled at ``points (N, d)``, evaluated at ``at (P, d)``
    (default: the points themselves), ``-> (P, m)``. ``bandwidth = inf`` is the global affine fit."""
    points, values, at = _check_field(points, values, at)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
        raise ValueError(f"bandwidth: expected a positive number (inf: the global affine fit), but got {bandwidth!r}")
    if bandwidth == float("inf"):
        design = torch.cat([torch.ones_like(points[:, :1]), points - points.mean(0)], 1)
        coefficients = torch.linalg.lstsq(design, values).solution
        return torch.cat([torch.ones_like(at[:, :1]), at - points.mean(0)], 1) @ coefficients
    dim = points.shape[1]
    # the ridge acts on the slope block only, at 1e-9 of its natural size (mass x bandwidth^2)
    slopes = torch.tensor([0.0] + [1.0] * dim, dtype=points.dtype, device=points.device)
    ridge = 1e-9 * bandwidth ** 2 * torch.diag(slopes)
    out = torch.empty(at.shape[0], values.shape[1], dtype=values.dtype, device=values.device)
    for start in range(0, at.shape[0], chunk):
        centres = at[start:start + chunk]
        offsets = points.unsqueeze(0) - centres.unsqueeze(1)                       # (c, N, d)
        weights = torch.exp(-offsets.pow(2).sum(-1) / (2 * bandwidth ** 2))       # (c, N)
        design = torch.cat([torch.ones_like(offsets[..., :1]), offsets], -1)      # (c, N, d+1)
        weighted = design * weights.unsqueeze(-1)
        normal = weighted.transpose(1, 2) @ design                                # (c, d+1, d+1)
        # relative to the local mass: keeps a lone far particle's fit defined (then nearly local constant)
        normal = normal + ridge * weights.sum(-1).clamp_min(1e-300)[:, None, None]
        right = weighted.transpose(1, 2) @ values                                 # (c, d+1, m)
        out[start:start + chunk] = torch.linalg.solve(normal, right)[:, 0]
    return out


def choose_bandwidth(points: torch.Tensor, values: torch.Tensor, noise_copy: torch.Tensor,
                     fractions: Sequence[float] = BANDWIDTH_FRACTIONS, evaluation: Optional[torch.Tensor] = None):
    """The bandwidth minimizing the unbiased error estimate (module docstring) over ``fractions`` of the
    cloud's spread. ``noise_copy (N, m)``: an independent copy of the noise in ``values``;
    ``evaluation``: indices of the particles at which the error is scored (default all; a subset keeps
    large clouds cheap, the smoother still uses every particle).

    Returns ``(bandwidth, mean squared error estimate per particle, {fraction: estimate})``."""
    points, values, _ = _check_field(points, values, None)
    if not isinstance(noise_copy, torch.Tensor) or tuple(noise_copy.shape) != tuple(values.shape):
        shape = tuple(noise_copy.shape) if isinstance(noise_copy, torch.Tensor) else type(noise_copy).__name__
        raise ValueError(f"noise_copy: expected the shape of values {tuple(values.shape)}, but got {shape}")
    spread = float((points - points.mean(0)).pow(2).mean().sqrt())
    index = slice(None) if evaluation is None else evaluation
    at = points[index]
    y, copy = values[index], noise_copy[index]
    copy_energy = float(copy.pow(2).sum(-1).mean())
    scores = {}
    for fraction in fractions:
        bandwidth = fraction * spread
        smoothed = local_linear(points, torch.cat([values, noise_copy], 1), bandwidth, at=at)
        smoothed_values, smoothed_copy = smoothed[:, :values.shape[1]], smoothed[:, values.shape[1]:]
        residual = float((smoothed_values - y).pow(2).sum(-1).mean())
        trace = float((smoothed_copy * copy).sum(-1).mean())
        scores[fraction] = residual - copy_energy + 2 * trace
    best = min(scores, key=scores.get)
    return best * spread, scores[best], scores


def _check_field(points, values, at):
    """``points (N, d)``, ``values (N, m)`` on the same rows, ``at (P, d)`` (default ``points``)."""
    points = check_points("points", points)
    if points.ndim != 2:
        raise ValueError(f"points: expected shape (N, d), but got {tuple(points.shape)}")
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or values.shape[0] != points.shape[0]:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"values: expected a tensor of shape ({points.shape[0]}, m) like points' rows, "
                         f"but got {shape}")
    at = points if at is None else check_points("at", at, points.shape[1])
    return points, values, at
