r"""Modified sequential thresholding least squares (MSTLS, eqs. 4.4-4.6) and the rank check of G.

For a threshold :math:`\lambda`, starting from :math:`w^0 = G^\dagger b`, MSTLS keeps the
coefficients whose magnitudes lie in :math:`[L^\lambda_i, U^\lambda_i]` with
:math:`L^\lambda_i = \lambda\max(1, \|b\|/\|G_i\|)`, :math:`U^\lambda_i = \lambda^{-1}\min(1, \|b\|/\|G_i\|)`,
re-solves least squares on that support, and repeats until the support is stable. The
threshold is the smallest minimiser over the candidate set of

.. math:: \mathcal L(\lambda) = \frac{\|G(w^\lambda - w^0)\|_2}{\|G w^0\|_2} + \frac{\|w^\lambda\|_0}{J}.

All least-squares problems are solved through one QR factorisation of the column-scaled
:math:`G` (:math:`\|Gw - b\|^2 = \|R w - Q^T b\|^2 + \text{const}`), so each of the ~100
thresholds costs only ``J x J`` work.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

__all__ = ["RankDeficientError", "mstls", "single_thread", "condition_number", "default_thresholds", "check_columns"]


class RankDeficientError(ValueError):
    """G does not have full column rank: no unique model. ``condition_number`` holds :math:`\\kappa(G)`."""

    def __init__(self, message: str, condition_number: float):
        super().__init__(message)
        self.condition_number = condition_number


@contextlib.contextmanager
def single_thread(device):
    """Run tiny dense linear algebra on one CPU thread (restored afterwards).

    The regression works on ``n x J`` matrices with ``J`` ~ 100; on a shared 2-core machine the
    OpenMP worker spinning of a second thread made QR/lstsq up to 50x slower than one thread.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_thresholds(count: int = 100, device=None, dtype=torch.float64) -> torch.Tensor:
    """The paper's candidate set: ``log10(lambda)`` equally spaced from -4 to 0 (``count`` points)."""
    return torch.logspace(-4, 0, count, device=device, dtype=dtype)


def condition_number(matrix: torch.Tensor) -> float:
    """2-norm condition number of ``matrix`` ``(n, J)`` (inf when singular)."""
    values = torch.linalg.svdvals(matrix)
    smallest = float(values[-1])
    return math.inf if smallest == 0 else float(values[0]) / smallest


def check_columns(matrix: torch.Tensor, names: Sequence[str], max_condition: float = 1e12) -> float:
    """Reject all-zero and duplicate columns, and a rank-deficient ``G``; return :math:`\\kappa(G)`
    of the column-normalised matrix (the regression works with it)."""
    if matrix.shape[0] < matrix.shape[1]:
        raise RankDeficientError(
            f"G: {matrix.shape[0]} test functions for {matrix.shape[1]} library terms; more rows than columns are "
            f"needed (lower the strides s_x/s_t or the support m)", math.inf)
    norms = matrix.norm(dim=0)
    scale = float(norms.max()) if norms.numel() else 0.0
    zero = [names[i] for i in range(len(names)) if float(norms[i]) <= 1e-14 * max(scale, 1e-300)]
    if zero:
        raise ValueError(f"library: all-zero columns of G for terms {zero} (they vanish on the data's domain)")
    unit = matrix / norms
    cosine = (unit.T @ unit).abs()
    cosine.fill_diagonal_(0)
    pairs = torch.nonzero(cosine > 1 - 1e-10)
    if pairs.numel():
        i, j = (int(v) for v in pairs[0])
        raise ValueError(f"library: duplicate columns of G for terms {names[i]!r} and {names[j]!r} "
                         f"(identical on the data's domain)")
    kappa = condition_number(unit)
    if not math.isfinite(kappa) or kappa > max_condition:
        raise RankDeficientError(
            f"G: rank deficient, condition number {kappa:.3g} of the column-normalised matrix exceeds "
            f"{max_condition:.1g}; remove collinear library terms or add data", kappa)
    return kappa


def mstls(matrix: torch.Tensor, rhs: torch.Tensor, thresholds: Optional[torch.Tensor] = None,
          max_iterations: int = 50) -> dict:
    """Sparse solution of ``matrix (n, J) @ w = rhs (n,)`` by MSTLS with the loss (4.6).

    Returns a dict: ``coefficients (J,)``, ``threshold`` (selected lambda), ``losses (len(thresholds),)``,
    ``thresholds``, ``least_squares (J,)`` (:math:`w^0`), ``residual`` (relative, of the sparse solution).
    """
    if thresholds is None:
        thresholds = default_thresholds(device=matrix.device, dtype=matrix.dtype)
    thresholds = torch.as_tensor(thresholds, dtype=matrix.dtype, device=matrix.device).reshape(-1)
    if thresholds.numel() == 0 or bool((thresholds <= 0).any()) or bool((thresholds > 1).any()):
        raise ValueError("thresholds: expected a non-empty set of sparsity thresholds in (0, 1]")
    count = matrix.shape[1]
    column_norms = matrix.norm(dim=0)
    scaled = matrix / column_norms  # unit columns: least squares is better conditioned
    q, r = torch.linalg.qr(scaled)
    projected = q.T @ rhs
    rhs_norm = rhs.norm()
    ratio = rhs_norm / column_norms
    lower_factor = torch.clamp(ratio, min=1.0)
    upper_factor = torch.clamp(ratio, max=1.0)

    def solve(support: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(count, dtype=matrix.dtype, device=matrix.device)
        if bool(support.any()):
            sub = r[:, support]
            w[support] = torch.linalg.lstsq(sub, projected.unsqueeze(1)).solution.squeeze(1) / column_norms[support]
        return w

    full = solve(torch.ones(count, dtype=torch.bool, device=matrix.device))
    reference = (matrix @ full).norm()
    losses, solutions = [], []
    for threshold in thresholds:
        lower, upper = threshold * lower_factor, upper_factor / threshold
        w = full
        support = torch.ones(count, dtype=torch.bool, device=matrix.device)
        for _ in range(max_iterations):
            new_support = support & (w.abs() >= lower) & (w.abs() <= upper)
            if torch.equal(new_support, support):
                break
            support = new_support
            w = solve(support)
        loss = (matrix @ (w - full)).norm() / reference + (w != 0).sum() / count
        losses.append(loss)
        solutions.append(w)
    losses = torch.stack(losses)
    best = int(torch.nonzero(losses == losses.min())[0])  # the smallest minimiser
    w = solutions[best]
    residual = float((matrix @ w - rhs).norm() / max(float(rhs_norm), 1e-300))
    return {"coefficients": w, "threshold": float(thresholds[best]), "losses": losses, "thresholds": thresholds,
            "least_squares": full, "residual": residual}
