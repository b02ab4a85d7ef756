r"""Scores of section 5: the true positivity ratio (5.1) and relative errors against a true model.

:func:`tpr` compares supports: ``TP / (TP + FN + FP)``. :func:`relative_errors` measures
relative :math:`\ell_2` errors of :math:`\nabla K` over the node offsets :math:`C - C`, and of
:math:`\nabla V` and :math:`\sigma` over the nodes of :math:`C`, for the parts the true model has.
A :class:`TrueModel` holds callables ``grad_K``, ``grad_V``, ``sigma`` (``(..., d) -> (..., d)``;
None for an absent part) and the true coefficients by term name (for the TPR).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch

from ..grid import Grid
from .model import WSINDyModel

__all__ = ["TrueModel", "tpr", "relative_errors", "relative_l2"]


@dataclass
class TrueModel:
    """The model that generated the data: true term weights by name and true callables."""

    terms: Dict[str, float]
    grad_K: Optional[Callable] = None
    grad_V: Optional[Callable] = None
    sigma: Optional[Callable] = None
    extra: dict = field(default_factory=dict)


def tpr(model: WSINDyModel, true_terms: Dict[str, float], kinds=None) -> float:
    """True positivity ratio (5.1) of ``model``'s support against the names in ``true_terms``.

    ``kinds`` restricts both supports to some parts (e.g. ``("interaction", "local")`` for the
    drift-only TPR). Names of ``true_terms`` must be terms of the model's library.
    """
    names = model.library.names
    unknown = sorted(set(true_terms) - set(names))
    if unknown:
        raise ValueError(f"true_terms: {unknown} are not terms of the library {model.library.name!r}")
    allowed = {t.name for t in model.library.terms if kinds is None or t.kind in kinds}
    truth = {n for n, w in true_terms.items() if w != 0 and n in allowed}
    found = {n for n in model.selected if n in allowed}
    positives = len(truth & found)
    denominator = positives + len(truth - found) + len(found - truth)
    return 1.0 if denominator == 0 else positives / denominator


def relative_l2(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """:math:`\\|a - b\\|_2 / \\|b\\|_2` (inf where the truth is zero but the estimate is not)."""
    estimate, truth = estimate.double(), truth.double()
    norm = float(truth.norm())
    difference = float((estimate - truth).norm())
    if norm == 0:
        return 0.0 if difference == 0 else float("inf")
    return difference / norm


def relative_errors(model: WSINDyModel, truth: TrueModel, grid: Optional[Grid] = None) -> Dict[str, float]:
    """``{"K": ..., "V": ..., "sigma": ...}`` relative errors for the parts present in ``truth``.

    ``grad K`` is compared on the offsets of ``C - C`` (``grid`` or the model's grid, restricted
    to the box's extent), ``grad V`` and ``sigma`` on the nodes of ``C``.
    """
    grid = grid or model.grid
    if grid is None:
        raise ValueError("grid: the model carries no grid; pass the grid C to compare on")
    nodes = grid.nodes(dtype=torch.float64).reshape(-1, grid.dim)
    offsets = grid.offsets(dtype=torch.float64).reshape(-1, grid.dim)
    extent = torch.tensor([b - a for a, b in zip(grid.lower, grid.upper)], dtype=torch.float64)
    offsets = offsets[(offsets.abs() <= extent).all(-1)]
    errors = {}
    if truth.grad_K is not None:
        errors["K"] = relative_l2(model.grad_K(offsets), truth.grad_K(offsets))
    if truth.grad_V is not None:
        errors["V"] = relative_l2(model.grad_V(nodes), truth.grad_V(nodes))
    if truth.sigma is not None:
        errors["sigma"] = relative_l2(model.sigma(nodes), truth.sigma(nodes))
    return errors
