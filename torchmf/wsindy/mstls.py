r"""Modified sequential thresholding least squares (MSTLS, eqs. 4.4-4.6) and the rank check of G.

For a threshold :math:`\lambda`, starting from :math:`w^0 = G^\dagger b`, MSTLS keeps the
coefficients whose magnitudes lie in :math:`[L^\lambda_i, U^\lambda_i]` with
:math:`L^\lambda_i = \lambda\max(1, \|b\|/\|G_i\|)`, :math:`U^\lambda_i = \lambda^{-1}\min(1, \|b\|/\|G_i\|)`,
re-solves least squares on that support, and repeats until the support is stable. The
threshold minimises over the candidate set

.. math:: \mathcal L(\lambda) = \frac{\|G(w^\lambda - w^0)\|_2}{\|G w^0\|_2} + \frac{\|w^\lambda\|_0}{J}.

Options (issue 16, measured in docs/benchmarks.md):

- ``thresholding="relative"``: :math:`L_i = \lambda \|b\|/\|G_i\|`, :math:`U_i = \lambda^{-1}\|b\|/\|G_i\|`,
  bounds on each term's share :math:`|w_i|\,\|G_i\|/\|b\|` of the data: rescaling a column does
  not change the selection (eqs. 4.4-4.5 mix absolute and relative bounds).
- ``exempt``/``nonnegative``: terms never thresholded and coefficients kept :math:`\ge 0` (the
  authors' STLSQP for the constant diffusion); a small active-set QP on the ``J x J`` factor.
  Exempt terms are not counted in :math:`\|w\|_0` (they are in every model).
- ``ridge``: the thresholding path starts from and iterates with Tikhonov-regularised fits
  (with collinear columns the plain :math:`w^0` has large cancelling coefficients that send the
  path astray); the loss judges, and the result is, the plain fit on each support found.
- ``plateau``: the chosen threshold is the largest one whose loss is within ``plateau`` of the
  minimum (the smallest minimiser moved with round-off from run to run).

All least-squares problems are solved through one QR factorisation of the column-scaled
:math:`G` (:math:`\|Gw - b\|^2 = \|R w - Q^T b\|^2 + \text{const}`), so each of the ~100
thresholds costs only ``J x J`` work; solutions are cached per support.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

__all__ = ["RankDeficientError", "mstls", "single_thread", "condition_number", "default_thresholds", "check_columns",
           "LeastSquares", "sequential_thresholding", "THRESHOLDINGS"]


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


THRESHOLDINGS = ("paper", "relative")


def mstls(matrix: torch.Tensor, rhs: torch.Tensor, thresholds: Optional[torch.Tensor] = None,
          max_iterations: int = 50, *, thresholding: str = "paper", exempt: Optional[torch.Tensor] = None,
          nonnegative: Optional[torch.Tensor] = None, plateau: float = 1e-9, ridge: float = 0.0) -> dict:
    r"""Sparse solution of ``matrix (n, J) @ w = rhs (n,)`` by MSTLS with the loss (4.6).

    Arguments:
        thresholds: candidate sparsity thresholds in (0, 1] (default :func:`default_thresholds`).
        thresholding: ``"paper"`` (bounds (4.4)-(4.5)) or ``"relative"`` (keep term ``i`` when
            :math:`\lambda \le |w_i|\,\|G_i\| / \|b\| \le 1/\lambda`: its share of ``b``, the
            same whatever the scale of the column; see the module doc).
        exempt: ``(J,)`` bool, terms never thresholded (e.g. the constant diffusion, as the authors' STLSQP).
        nonnegative: ``(J,)`` bool, coefficients constrained to ``>= 0`` in every least-squares
            solve (a small active-set quadratic program on the ``J x J`` triangular factor); a
            constrained term held at 0 is not selected.
        plateau: the chosen threshold is the largest one whose loss is within ``plateau`` (absolute)
            of the minimum: on a flat stretch of the loss the choice does not hinge on round-off.

    Returns a dict: ``coefficients (J,)``, ``threshold`` (selected lambda), ``losses (len(thresholds),)``,
    ``thresholds``, ``least_squares (J,)`` (:math:`w^0`, constrained), ``residual`` (relative, of the
    sparse solution), ``solver`` (the :class:`LeastSquares` of the column-scaled system, for re-use),
    ``supports`` ``(len(thresholds), J)`` bool (the path: the support found at each threshold).
    """
    if thresholds is None:
        thresholds = default_thresholds(device=matrix.device, dtype=matrix.dtype)
    thresholds = torch.as_tensor(thresholds, dtype=matrix.dtype, device=matrix.device).reshape(-1)
    if thresholds.numel() == 0 or bool((thresholds <= 0).any()) or bool((thresholds > 1).any()):
        raise ValueError("thresholds: expected a non-empty set of sparsity thresholds in (0, 1]")
    if thresholding not in THRESHOLDINGS:
        raise ValueError(f"thresholding: expected one of {list(THRESHOLDINGS)}, but got {thresholding!r}")
    count = matrix.shape[1]
    exempt = _mask("exempt", exempt, count, matrix.device)
    solver = LeastSquares(matrix, rhs, nonnegative, ridge)
    everything = torch.ones(count, dtype=torch.bool, device=matrix.device)
    start = solver.solve(everything)  # with the ridge: it steers the thresholding path only
    full = solver.solve(everything, regularised=False)  # w^0 of the loss (4.6)
    reference = (matrix @ full).norm()
    losses, solutions = [], []
    for threshold in thresholds:
        support = sequential_thresholding(solver, start, float(threshold), thresholding, exempt, max_iterations)
        w = solver.solve(support, regularised=False)  # the loss judges the plain fit on the support found
        # the sparsity term counts the terms that are selected: the exempt ones are in every model
        losses.append((matrix @ (w - full)).norm() / reference + ((w != 0) & ~exempt).sum() / count)
        solutions.append(w)
    losses = torch.stack(losses)
    # the largest threshold on the minimum's plateau (the smallest minimiser moved with round-off)
    best = int(torch.nonzero(losses <= losses.min() + plateau)[-1])
    w = solutions[best]
    residual = float((matrix @ w - rhs).norm() / max(float(rhs.norm()), 1e-300))
    return {"coefficients": w, "threshold": float(thresholds[best]), "losses": losses, "thresholds": thresholds,
            "least_squares": full, "residual": residual, "solver": solver,
            "supports": torch.stack([s != 0 for s in solutions])}


def sequential_thresholding(solver: "LeastSquares", start: torch.Tensor, threshold: float, thresholding: str,
                            exempt: torch.Tensor, max_iterations: int = 50) -> torch.Tensor:
    """MSTLS at one ``threshold`` from ``start`` ``(J,)``: drop the terms outside the bounds, re-solve on
    the support, until it is stable. Returns the support ``(J,)`` bool (the ``exempt`` terms stay in
    it, also where a constraint holds them at 0)."""
    lower, upper = solver.bounds(threshold, thresholding)
    w = start
    support = torch.ones_like(exempt)
    for _ in range(max_iterations):
        magnitude = w.abs()
        new_support = support & (((magnitude >= lower) & (magnitude <= upper)) | exempt)
        if torch.equal(new_support, support):
            break
        support = new_support
        w = solver.solve(support)
    return support


class LeastSquares:
    r"""Least squares ``min |G w - b|`` on column subsets from one QR factorisation of the
    column-scaled ``G`` (:math:`\|Gw - b\|^2 = \|R w - Q^T b\|^2 + \text{const}`), optionally with
    ``w_i >= 0`` on the ``nonnegative`` columns (active set: a negative constrained coefficient is
    held at 0 and released again when the gradient there points inwards)."""

    def __init__(self, matrix: torch.Tensor, rhs: torch.Tensor, nonnegative: Optional[torch.Tensor] = None,
                 ridge: float = 0.0):
        if not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge >= 0):
            raise ValueError(f"ridge: expected a number >= 0, but got {ridge!r}")
        count = matrix.shape[1]
        self.count, self.device, self.dtype = count, matrix.device, matrix.dtype
        self.column_norms = matrix.norm(dim=0)
        scaled = matrix / self.column_norms  # unit columns: least squares is better conditioned
        q, self.r = torch.linalg.qr(scaled)
        self.projected = q.T @ rhs
        self.rhs_norm = rhs.norm()
        self.nonnegative = _mask("nonnegative", nonnegative, count, matrix.device)
        self.constrained = bool(self.nonnegative.any())
        self._solutions = {}  # support -> coefficients: the thresholds revisit the same supports
        self.ridge = float(ridge)

    def bounds(self, threshold: float, thresholding: str):
        """Lower and upper bounds ``(J,)`` on the coefficient magnitudes at ``threshold``."""
        ratio = self.rhs_norm / self.column_norms  # the coefficient that makes column i as large as b
        if thresholding == "relative":
            return threshold * ratio, ratio / threshold
        return threshold * torch.clamp(ratio, min=1.0), torch.clamp(ratio, max=1.0) / threshold

    def _unconstrained(self, support: torch.Tensor, ridge: float) -> torch.Tensor:
        """Scaled coefficients ``(J,)`` (zero off ``support``)."""
        w = torch.zeros(self.count, dtype=self.dtype, device=self.device)
        if bool(support.any()):
            design, target = self.r[:, support], self.projected.unsqueeze(1)
            if ridge:  # Tikhonov on the unit-column coefficients: [R; ridge I] w = [Q^T b; 0]
                size = design.shape[1]
                design = torch.cat((design, ridge * torch.eye(size, dtype=self.dtype, device=self.device)))
                target = torch.cat((target, target.new_zeros(size, 1)))
            # 'gels' (QR): bit-reproducible; the default CPU driver (gelsy) varied in the last digits
            # from call to call. The columns of a subset of R are independent (check_columns).
            w[support] = torch.linalg.lstsq(design, target, driver="gels").solution.squeeze(1)
        return w

    def solve(self, support: torch.Tensor, regularised: bool = True) -> torch.Tensor:
        """Coefficients ``(J,)`` of the least-squares fit on the columns in ``support`` (bool ``(J,)``),
        with the solver's ridge unless ``regularised`` is False."""
        ridge = self.ridge if regularised else 0.0
        key = (support.cpu().numpy().tobytes(), ridge)
        if key not in self._solutions:
            self._solutions[key] = self._solve(support, ridge)
        return self._solutions[key]

    def _solve(self, support: torch.Tensor, ridge: float) -> torch.Tensor:
        free = support.clone()
        w = self._unconstrained(free, ridge)
        if self.constrained:
            for _ in range(2 * self.count + 1):
                negative = free & self.nonnegative & (w < 0)
                if bool(negative.any()):  # hold the most negative constrained coefficient at 0
                    free[int(torch.argmin(torch.where(negative, w, torch.zeros_like(w))))] = False
                    w = self._unconstrained(free, ridge)
                    continue
                held = support & ~free
                gradient = self.r.T @ (self.r @ w - self.projected) + ridge * ridge * w
                releasing = held & (gradient < -1e-12 * max(float(self.projected.norm()), 1e-300))
                if not bool(releasing.any()):
                    break
                free[int(torch.argmin(torch.where(releasing, gradient, torch.zeros_like(gradient))))] = True
                w = self._unconstrained(free, ridge)
        return w / self.column_norms


def _mask(name: str, value, count: int, device) -> torch.Tensor:
    """A bool mask ``(J,)`` (all False when None)."""
    if value is None:
        return torch.zeros(count, dtype=torch.bool, device=device)
    value = torch.as_tensor(value, device=device)
    if value.dtype != torch.bool or value.shape != (count,):
        raise ValueError(f"{name}: expected a bool mask of shape ({count},), but got {value.dtype} {tuple(value.shape)}")
    return value
