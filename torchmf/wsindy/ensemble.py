r"""Bootstrap inclusion probabilities of the library terms (ensembling, as pysindy's ``EnsembleOptimizer``).

The rows of :math:`G w = b` (test functions) are resampled with replacement ``count`` times with an
explicit seed; each resample is solved by the same MSTLS as the full system (threshold chosen
again on the resample, :func:`.mstls.mstls`), and the probability of term ``j`` is the fraction of
resamples that keep it. A term the data support stays in nearly every resample; a term kept by a
lucky draw of the noise drops out of many.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_int
from .mstls import mstls

__all__ = ["inclusion_probabilities"]


def inclusion_probabilities(matrix: torch.Tensor, rhs: torch.Tensor, thresholding: str, exempt: torch.Tensor,
                            nonnegative: Optional[torch.Tensor], ridge: float, count: int,
                            seed: int = 0) -> torch.Tensor:
    """Fraction ``(J,)`` of ``count`` row-bootstrap resamples of ``matrix (n, J)``, ``rhs (n,)`` that select each term.

    ``thresholding``, ``exempt``, ``nonnegative`` and ``ridge`` are those of the full fit
    (:func:`.mstls.mstls`); ``seed`` seeds the resampling (a generator on the data's device).
    """
    count = check_int("ensemble", count, minimum=1)
    seed = check_int("ensemble_seed", seed, minimum=0)
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    rows = matrix.shape[0]
    kept = torch.zeros(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(count):
        sample = torch.randint(rows, (rows,), generator=generator, device=matrix.device)
        w = mstls(matrix[sample], rhs[sample], thresholding=thresholding, exempt=exempt, nonnegative=nonnegative,
                  ridge=ridge)["coefficients"]
        kept += (w != 0).to(matrix.dtype)
    return kept / count
