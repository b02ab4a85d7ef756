r"""From the weak system :math:`Gw = b` to the coefficients: the selection methods of :func:`torchmf.wsindy.identify`.

``selection`` (compared on the held-out suite of ``scripts/wsindy_suite.py``, docs/wsindy.md):

- ``"l0"`` (default): best subset of each size by swaps, size by held-out time windows (:mod:`.selection`);
  for libraries of more than 40 free terms the supports of the MSTLS path are its extra starts.
- ``"l0_exact"``: the same with every subset enumerated (exact :math:`\ell_0`; slow for large libraries).
- ``"mstls"``: the thresholding path and loss (4.6) of the paper (:mod:`.mstls`), with the
  ``regression``/``thresholding``/``ridge`` options.
- ``"stability"``: MSTLS on row-bootstrap resamples (:mod:`.ensemble`), the terms kept in at least
  half of them, refitted.
- ``"least_squares"``: every term (the trivial baseline; the oracle when the library holds only the true terms).

Every method ends with the (constrained) least-squares fit on the support it found.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .ensemble import inclusion_probabilities
from .mstls import LeastSquares, mstls
from .selection import BACKWARD_LIMIT, FoldGrams, select_support, time_blocks

__all__ = ["SELECTIONS", "regress"]

SELECTIONS = ("l0", "l0_exact", "mstls", "stability", "least_squares")
#: held-out time windows of the ``l0`` selection
FOLDS = 5


def regress(matrix: torch.Tensor, rhs: torch.Tensor, time_index: torch.Tensor, *, selection: str,
            exempt: torch.Tensor, nonnegative: Optional[torch.Tensor], thresholds=None, thresholding: str = "paper",
            ridge: float = 0.0, max_terms: int = 8, stability_resamples: int = 20, seed: int = 0) -> dict:
    """Coefficients of ``matrix (n, J) @ w = rhs (n,)`` by ``selection``; ``time_index (n,)``: time of each row.

    Returns a dict: ``coefficients (J,)`` (on the matrix's device), ``residual`` (relative, all rows),
    ``held_out_residual`` (relative residual of the chosen support on held-out time windows),
    ``least_squares (J,)`` (full library), ``threshold`` (MSTLS's, None for the others),
    ``fold (n,)`` (held-out window of each row), ``details`` (JSON-able) and, for ``l0``, ``best_supports
    (K+1, J)`` (best subset of each size) and ``chosen_index``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection: expected one of {list(SELECTIONS)}, but got {selection!r}")
    exempt = exempt.to(matrix.device)  # the masks follow the data (the Gram-matrix search runs on the host)
    large = int((~exempt).sum()) > BACKWARD_LIMIT
    if selection in ("mstls", "stability") or (selection == "l0" and large):
        path = mstls(matrix, rhs, thresholds, thresholding=thresholding, exempt=exempt, nonnegative=nonnegative,
                     ridge=ridge)
        solver: LeastSquares = path["solver"]
        full = path["least_squares"]
    else:  # the l0 searches start from forward and backward selection, not from the MSTLS path
        solver = LeastSquares(matrix, rhs, nonnegative)
        full = solver.solve(torch.ones(matrix.shape[1], dtype=torch.bool, device=matrix.device))
    fold = time_blocks(time_index.to(matrix.device), FOLDS)
    grams = FoldGrams(matrix, rhs, fold, FOLDS)
    details, extra = {}, {}
    threshold = None
    if selection == "mstls":
        support = path["coefficients"] != 0
        support = support | exempt
        threshold = path["threshold"]
    elif selection in ("l0", "l0_exact"):
        starts = path["supports"].cpu() if selection == "l0" and large else None
        chosen = select_support(grams, exempt.cpu(), max_terms, "swap" if selection == "l0" else "exact", starts=starts)
        support = chosen["support"].to(matrix.device)
        details = {"size": chosen["size"], "cv": chosen["cv"].tolist(), "cv_se": chosen["cv_se"].tolist(),
                   "best_subsets": [[int(j) for j in torch.nonzero(row)[:, 0]] for row in chosen["supports"]]}
        extra = {"best_supports": chosen["supports"], "chosen_index": int(torch.nonzero(
            (chosen["supports"] == chosen["support"]).all(-1))[0])}
    elif selection == "stability":
        probabilities = inclusion_probabilities(matrix, rhs, thresholding, exempt, nonnegative, ridge,
                                                stability_resamples, seed)
        support = (probabilities >= 0.5) | exempt
        details = {"probabilities": probabilities.tolist()}
    else:
        support = torch.ones(matrix.shape[1], dtype=torch.bool, device=matrix.device)
    w = solver.solve(support, regularised=False)
    residual = float((matrix @ w - rhs).norm() / max(float(rhs.norm()), 1e-300))
    held_out = grams.cross_validation((support | exempt).cpu().unsqueeze(0))[0].mean()
    return {"coefficients": w, "residual": residual, "held_out_residual": math.sqrt(max(float(held_out), 0.0)),
            "least_squares": full, "threshold": threshold, "details": details,
            "fold": fold, "support": (w != 0) | exempt, **extra}
