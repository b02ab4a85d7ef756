r"""Weights of the two measures of a transport problem: checks, normalisation, log-weights.

A cloud ``x (..., N, d)`` with weights ``a (..., N)`` is the measure :math:`\sum_i a_i \delta_{x_i}`.
:func:`check_weights` accepts what a user may pass (``None`` for uniform, a tensor, array or list
of ``N`` entries, or one row per batch element) and returns probability vectors: weights are
normalised to sum to 1 over each cloud, so counts, intensities or ``1/n`` weights all mean the
same measure.

Target particles of zero weight carry no mass and are left out of the solve
(:func:`drop_massless`). A source particle of zero weight is refused: the map
:math:`T(x_i) = \sum_j \pi_{ij} y_j / a_i` is 0/0 there, and any value would be made up.
"""
from __future__ import annotations

from typing import Optional

import torch

from .kernels import uniform_log

__all__ = ["check_weights", "log_weights", "drop_massless", "barycentric_rows"]


def check_weights(name: str, weights, points: torch.Tensor, positive: Optional[str] = None) -> Optional[torch.Tensor]:
    """``weights`` for ``points (..., N, d)`` as probability vectors ``(..., N)`` (``None`` stays ``None``).

    Accepted: ``(N,)`` (shared by every batch element) or ``points.shape[:-1]``; finite, nonnegative,
    positive sum per cloud; with ``positive`` (the reason, for the message) every entry positive. Tensors must be on
    ``points``' device; the result has ``points``' dtype. Anything else: ``ValueError``/``TypeError``
    naming ``name``.
    """
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        try:
            weights = torch.as_tensor(weights, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name}: expected a tensor, array or list of numbers, but got "
                            f"{type(weights).__name__} ({error})") from None
        weights = weights.to(points.device)
    elif weights.device != points.device:
        raise ValueError(f"{name}: expected weights on {points.device} like the particles, but got {weights.device}")
    if weights.dtype == torch.bool or weights.is_complex():
        raise TypeError(f"{name}: expected real numbers, but got dtype {weights.dtype}")
    count, batch = points.shape[-2], points.shape[:-2]
    if tuple(weights.shape) not in ((count,), tuple(batch) + (count,)):
        raise ValueError(f"{name}: expected shape ({count},) or {tuple(batch) + (count,)} (one weight per particle "
                         f"of the cloud of shape {tuple(points.shape)}), but got {tuple(weights.shape)}")
    weights = weights.to(points.dtype).expand(*batch, count)
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(f"{name}: expected finite weights, but found {int((~torch.isfinite(weights)).sum())} NaN/inf")
    if bool((weights < 0).any()):
        raise ValueError(f"{name}: expected nonnegative weights, but the smallest is {float(weights.min()):g}")
    total = weights.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError(f"{name}: expected a positive total weight in every cloud, but a cloud sums to 0")
    if positive is not None and bool((weights == 0).any()):
        raise ValueError(f"{name}: expected positive weights ({positive}), but {int((weights == 0).sum())} "
                         f"particles have weight 0")
    return weights / total


def log_weights(weights: Optional[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """``(N,)`` log-weights of one cloud ``points (N, d)``: uniform when ``weights`` is ``None``."""
    return uniform_log(points) if weights is None else weights.log()


def drop_massless(points: torch.Tensor, weights: Optional[torch.Tensor]):
    """``(points, weights)`` of one cloud without its zero-weight particles (they carry no mass)."""
    if weights is None or bool((weights > 0).all()):
        return points, weights
    keep = weights > 0
    return points[keep], weights[keep]


def barycentric_rows(plan: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Barycentric projection of a plan ``(N, M)`` onto ``y (M, d)``:
    :math:`T(x_i) = \sum_j \pi_{ij} y_j / \sum_j \pi_{ij}`, ``(N, d)`` (rows of the plan sum to
    the source weights :math:`a_i`)."""
    return (plan @ y) / plan.sum(1, keepdim=True)
