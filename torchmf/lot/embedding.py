r"""LOT embedding of a sequence of clouds against one reference cloud, and its principal components
(the trajectory picture of Fig. 6.6).

Shapes: measures ``(L, N, d)``, reference ``(N, d)``, embedding ``(L, N * d)``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int, check_points, check_tensor
from ..transport import TransportSolver
from .velocity import lot_method


def lot_embedding(measures: torch.Tensor, reference: torch.Tensor, method: str = "auto",
                  blur: Optional[float] = None) -> torch.Tensor:
    r"""LOT embedding :math:`\mu \mapsto T_\sigma^\mu - \mathrm{id}` against one reference cloud.

    Arguments:
        measures: ``(L, N, d)`` clouds (each uniform on N points).
        reference: ``(N, d)`` reference cloud :math:`\sigma`.

    Returns:
        ``(L, N * d)``: the flattened displacements, one row per measure.
    """
    measures = check_points("measures", measures)
    if measures.ndim != 3:
        raise ValueError(f"measures: expected shape (L, N, d), but got {tuple(measures.shape)}")
    reference = check_points("reference", reference, measures.shape[-1])
    if reference.ndim != 2 or reference.shape[0] != measures.shape[1]:
        raise ValueError(f"reference: expected shape ({measures.shape[1]}, {measures.shape[2]}), "
                         f"but got {tuple(reference.shape)}")
    solver = TransportSolver(lot_method(method, reference.shape[0], reference.shape[1]), blur=blur, debias=False)
    return torch.stack([(solver(reference, cloud) - reference).reshape(-1) for cloud in measures])


def pca(vectors: torch.Tensor, components: int = 2, basis: Optional[torch.Tensor] = None):
    """Principal components of the rows of ``vectors (L, D)``.

    Returns ``(scores (L, components), basis (components, D), mean (D,), explained (components,))``;
    pass ``basis=(basis, mean)`` to project other rows on a basis computed before.
    """
    vectors = check_tensor("vectors", vectors, ndim=2)
    if basis is not None:
        axes, mean = basis
        return (vectors - mean) @ axes.T
    components = check_int("components", components, minimum=1)
    if components > min(vectors.shape):
        raise ValueError(f"components: expected at most {min(vectors.shape)} for shape {tuple(vectors.shape)}, "
                         f"but got {components}")
    mean = vectors.mean(0)
    _, singular, right = torch.linalg.svd(vectors - mean, full_matrices=False)
    explained = singular[:components] ** 2 / (singular ** 2).sum().clamp_min(1e-30)
    axes = right[:components]
    return (vectors - mean) @ axes.T, axes, mean, explained
