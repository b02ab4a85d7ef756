r"""Best-subset selection with held-out time windows (issue 23): the support that survives collinear libraries.

MSTLS (:mod:`.mstls`) walks one path of supports; with nearly collinear columns (``|x|^3`` against
``|x|^2 + |x|^4``) the path can miss the true support entirely and the loss (4.6) cannot recover it.
Here the support of each size ``k`` is the best subset (smallest residual of :math:`Gw = b`), and
the size is chosen by cross-validation over **held-out time windows**: the rows of ``G`` (test
functions) are split by the time of their centre into ``folds`` contiguous blocks, each block is
predicted from a fit on the others. A term is kept only when it predicts later or earlier times
better, not when it fits round-off. Because the weak form's discretisation error is systematic
(the same in every window), extra terms can still lower the held-out residual by tens of percent;
the chosen size is therefore the smallest whose held-out residual is within a factor
:data:`SIZE_FACTOR` of the lowest, and within one standard error over the folds (:func:`choose_size`).

Two searches for the best subset of each size:

- ``"exact"``: every subset (an exact :math:`\ell_0` solution, as MIOSR in pysindy, by enumeration;
  sizes whose count of subsets exceeds ``budget`` are skipped),
- ``"swap"``: a local search -- forward selection, backward elimination (libraries of at most
  :data:`BACKWARD_LIMIT` free terms; larger ones start from the MSTLS path), single swaps (one term
  out, another in) until no swap lowers the residual, then a downward pass (the best of size
  ``k + 1`` less one term). On the suite of ``scripts/wsindy_suite.py`` it agreed with ``"exact"``
  in 14 of 15 runs, at a third of the time (docs/wsindy.md).

Everything works on Gram matrices of the column-normalised augmented system :math:`[G/\|G_j\|,\ b/\|b\|]`
(``(J+1) x (J+1)``, one per fold), so a candidate support costs a ``J x J`` solve whatever the
number of rows; candidates of one size are solved in one batch.
The exempt terms are in every support (the constant diffusion under the constrained regression).
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import torch

from .._validation import check_int

__all__ = ["FoldGrams", "select_support", "SEARCHES", "best_subsets", "time_blocks", "choose_size"]

SEARCHES = ("swap", "exact")
#: above this many free terms the swap search starts from forward selection and the given starts
#: (the MSTLS path) only, not from backward elimination
BACKWARD_LIMIT = 40


def time_blocks(time_index: torch.Tensor, folds: int) -> torch.Tensor:
    """Fold ``(n,)`` of each row from its time index ``(n,)``: ``folds`` contiguous blocks of the times."""
    low, high = int(time_index.min()), int(time_index.max())
    span = max(high - low + 1, 1)
    return torch.clamp(((time_index - low) * folds) // span, max=folds - 1)


class FoldGrams:
    """Gram matrices of the column-normalised ``[G, b]`` ``(n, J+1)``: of all rows and of each fold.

    Arguments:
        matrix: ``G (n, J)``; rhs: ``b (n,)``; fold: ``(n,)`` fold of each row (``0 .. folds-1``);
        weights: optional ``(n,)`` row multiplicities (a bootstrap resample).
    """

    def __init__(self, matrix: torch.Tensor, rhs: torch.Tensor, fold: torch.Tensor, folds: int,
                 weights: Optional[torch.Tensor] = None):
        matrix, rhs = matrix.double().cpu(), rhs.double().cpu()
        self.column_norms = matrix.norm(dim=0)
        self.rhs_norm = rhs.norm()
        augmented = torch.cat((matrix / self.column_norms, (rhs / self.rhs_norm).unsqueeze(1)), 1)
        weighted = augmented if weights is None else augmented * weights.double().cpu().unsqueeze(1)
        fold = fold.cpu()
        self._masks = [fold == f for f in range(folds)]
        self._blocks = [augmented[mask] for mask in self._masks]  # each fold's rows, reused by resampled()
        self._set_tests(torch.stack([block.T @ weighted[mask] for block, mask in zip(self._blocks, self._masks)]))
        self.count = matrix.shape[1]

    def _set_tests(self, tests: torch.Tensor) -> None:
        self.tests = tests
        self.total = self.tests.sum(0)
        self.trains = self.total.unsqueeze(0) - self.tests

    def resampled(self, weights: torch.Tensor) -> "FoldGrams":
        """The Grams of the same rows with multiplicities ``weights (n,)`` (a bootstrap resample): equal, bit for
        bit, to ``FoldGrams(matrix, rhs, fold, folds, weights)`` without renormalising or re-splitting the rows."""
        weights = weights.double().cpu()
        copy = object.__new__(FoldGrams)
        copy.column_norms, copy.rhs_norm, copy.count = self.column_norms, self.rhs_norm, self.count
        copy._masks, copy._blocks = self._masks, self._blocks
        copy._set_tests(torch.stack([block.T @ (block * weights[mask].unsqueeze(1))
                                     for block, mask in zip(self._blocks, self._masks)]))
        return copy

    def fit_residual(self, supports: torch.Tensor) -> torch.Tensor:
        """Residual ``(S,)`` of the least-squares fit on all rows, for supports ``(S, J)`` bool."""
        return _by_size(supports, lambda index: _residual(self.total, self.total, index))

    def cross_validation(self, supports: torch.Tensor) -> torch.Tensor:
        """Held-out residuals ``(S, folds)``, each fold's relative to its :math:`\\|b\\|^2`.

        One batched solve over folds and supports: the unselected columns are masked to identity rows."""
        mask = supports.double().unsqueeze(0)  # (1, S, J)
        trains, tests = self.trains.unsqueeze(1), self.tests.unsqueeze(1)  # (F, 1, J+1, J+1)
        inner = trains[..., :-1, :-1] * mask.unsqueeze(-1) * mask.unsqueeze(-2) + torch.diag_embed(1 - mask)
        factor, failed = torch.linalg.cholesky_ex(inner)  # (F, S, J, J)
        w = torch.cholesky_solve((trains[..., :-1, -1] * mask).unsqueeze(-1), factor)[..., 0]  # (F, S, J)
        quadratic = ((w.unsqueeze(-2) @ tests[..., :-1, :-1])[..., 0, :] * w).sum(-1)
        total = tests[..., -1, -1]  # (F, 1)
        value = quadratic - 2 * (w * tests[..., :-1, -1]).sum(-1) + total
        value = torch.where((failed > 0) | torch.isnan(value), total.expand_as(value), value.clamp_min(0))
        return (value / total.clamp_min(1e-300)).T


    def added_term_residuals(self, support: torch.Tensor) -> torch.Tensor:
        """Held-out residuals ``(J, folds)`` of ``support (J,) bool`` with each term ``j`` added (row ``j``).

        Each fold's fit of ``support + j`` is the fit of ``support`` updated by the Schur complement of
        column ``j`` (one factorisation per fold for all ``J`` candidates, not ``J`` solves); a term already
        in the support, or one collinear with it (Schur complement below 1e-12 of its norm), gets the
        support's own residual; a fold where the support itself is singular gets 1 (predicting nothing).
        Relative to each fold's :math:`\\|b\\|^2`, as :meth:`cross_validation`."""
        index = torch.nonzero(support.cpu())[:, 0]
        count = self.count
        trains, tests = self.trains, self.tests  # (F, J+1, J+1)
        folds = trains.shape[0]
        cross = trains[:, index, :count]  # (F, k, J)
        failed = torch.zeros(folds, dtype=torch.bool)
        if index.numel():
            inner = trains[:, index.unsqueeze(-1), index.unsqueeze(-2)]
            factor, info = torch.linalg.cholesky_ex(inner)
            failed = info > 0
            if bool(failed.any()):  # singular support on a fold: as cross_validation, it predicts nothing there
                identity = torch.eye(len(index), dtype=inner.dtype).expand_as(inner)
                factor = torch.where(failed[:, None, None], identity, factor)  # the identity is its own factor
            solved = torch.cholesky_solve(torch.cat((cross, trains[:, index, count:]), -1), factor)
        else:
            solved = torch.zeros(folds, 0, count + 1, dtype=trains.dtype)
        directions, base = solved[..., :count], solved[..., count]  # A^-1 T[s, :J] (F, k, J); w_S (F, k)
        diagonal = torch.diagonal(trains, dim1=-2, dim2=-1)[:, :count]
        schur = diagonal - (cross * directions).sum(-2)  # (F, J)
        numerator = trains[:, :count, count] - (cross * base.unsqueeze(-1)).sum(-2)
        usable = schur > 1e-12 * diagonal
        usable[:, index] = False
        alpha = torch.where(usable, numerator / torch.where(usable, schur, torch.ones_like(schur)), 0.0)
        weights = torch.zeros(folds, count, count, dtype=trains.dtype)  # row j: coefficients of support + j
        weights[:, :, index] = (base.unsqueeze(1) - alpha.unsqueeze(-1) * directions.transpose(1, 2))
        weights = weights + torch.diag_embed(alpha)
        quadratic = ((weights @ tests[:, :count, :count]) * weights).sum(-1)
        total = tests[:, count, count].unsqueeze(-1)  # (F, 1)
        value = quadratic - 2 * (weights * tests[:, None, :count, count]).sum(-1) + total
        value = torch.where(failed.unsqueeze(-1) | torch.isnan(value), total.expand_as(value), value.clamp_min(0))
        return (value / total.clamp_min(1e-300)).T


def _by_size(supports: torch.Tensor, evaluate) -> torch.Tensor:
    """Apply ``evaluate(index (P, s))`` to the supports grouped by their size; results ``(S,)`` in order."""
    sizes = supports.sum(-1)
    out = torch.empty(supports.shape[0], dtype=torch.float64)
    for size in torch.unique(sizes).tolist():
        rows = torch.nonzero(sizes == size).squeeze(-1)
        index = torch.nonzero(supports[rows])[:, 1].reshape(len(rows), size)
        out[rows] = evaluate(index)
    return out


def _residual(train: torch.Tensor, test: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """:math:`\\|Gw - b\\|^2` under the Gram ``test`` of ``w`` fitted under ``train``, on columns ``index (P, s)``."""
    if index.shape[1] == 0:
        return test[-1, -1].expand(index.shape[0]).clone()
    inner = train[index.unsqueeze(-1), index.unsqueeze(-2)]  # (P, s, s)
    factor, failed = torch.linalg.cholesky_ex(inner)
    target = train[index, -1]
    w = torch.cholesky_solve(target.unsqueeze(-1), factor)  # (P, s, 1)
    if test is train:  # at the least-squares optimum |Gw - b|^2 = |b|^2 - c_S . w
        value = train[-1, -1] - (target * w[..., 0]).sum(-1)
    else:
        quadratic = (w.transpose(-1, -2) @ test[index.unsqueeze(-1), index.unsqueeze(-2)] @ w)[:, 0, 0]
        value = quadratic - 2 * (test[index, -1] * w[..., 0]).sum(-1) + test[-1, -1]
    # a singular (collinear) subset gets no fit: the residual of predicting nothing
    return torch.where((failed > 0) | torch.isnan(value), test[-1, -1].expand_as(value), value.clamp_min(0))


def best_subsets(grams: FoldGrams, exempt: torch.Tensor, max_size: int, search: str = "swap",
                 starts: Optional[torch.Tensor] = None, budget: int = 200_000,
                 initial: Optional[torch.Tensor] = None) -> dict:
    """Best support of each size ``k = 0 .. max_size`` of free (non-exempt) terms: ``{k: (J,) bool}``.

    ``starts (S, J)``: extra starting supports of the swap search; ``initial (K+1, J)``: start the
    swap search of size ``k`` from ``initial[k]`` only (a resample of data whose best subsets are known)."""
    if search not in SEARCHES:
        raise ValueError(f"selection search: expected one of {list(SEARCHES)}, but got {search!r}")
    free = [j for j in range(grams.count) if not bool(exempt[j])]
    max_size = min(max_size, len(free))
    base = exempt.cpu().clone()
    best = {0: base}
    if initial is not None:  # sizes far below the chosen one are far worse: kept as they are
        for k in range(1, min(max_size, initial.shape[0] - 1) + 1):
            best[k] = _swap_descent(grams, initial[k], free) if k >= max_size - 2 else initial[k]
        return best
    if search == "exact":
        for k in range(1, max_size + 1):
            if math.comb(len(free), k) > budget:
                break
            best[k] = _best_of(grams, _enumerate(base, free, k))
        return best
    pool = [] if starts is None else list(torch.unique(starts.cpu() | base, dim=0))
    if len(free) <= BACKWARD_LIMIT:  # backward elimination costs ~J^5 flops: the MSTLS path starts large libraries
        pool += _backward(grams, base, free)
    current = base
    for k in range(1, max_size + 1):
        flags = current.tolist()
        additions = [j for j in free if not flags[j]]
        current = _best_of(grams, _with(current, [-1] * len(additions), additions))
        candidates = torch.unique(torch.stack([current] + [s for s in pool if int((s & ~base).sum()) == k]), dim=0)
        # descend from the two best starts only (each descent costs a few batched solves)
        order = torch.argsort(grams.fit_residual(candidates))[:2]
        found = torch.stack([_swap_descent(grams, candidates[i], free) for i in order.tolist()])
        current = _best_of(grams, found)
        best[k] = current
    for k in range(max_size - 1, 0, -1):  # a downward pass: the best of size k+1 less one term, improved
        flags = best[k + 1].tolist()
        inside = [j for j in free if flags[j]]
        down = _swap_descent(grams, _best_of(grams, _with(best[k + 1], inside, [-1] * len(inside))), free)
        best[k] = _best_of(grams, torch.stack([best[k], down]))
    return best


def _backward(grams: FoldGrams, base: torch.Tensor, free) -> list:
    """Backward elimination from all terms: the support of each size on the way down (starting points)."""
    support = base.clone()
    support[free] = True
    path = [support]
    while int((support & ~base).sum()) > 1:
        flags = support.tolist()
        inside = [j for j in free if flags[j]]
        candidates = _with(support, inside, [-1] * len(inside))
        support = _best_of(grams, candidates)
        path.append(support)
    return path


def _with(support: torch.Tensor, remove, add) -> torch.Tensor:
    """Copies ``(P, J)`` of ``support``: copy ``i`` without term ``remove[i]`` and with term ``add[i]``
    (``-1``: nothing; ``remove``, ``add`` are lists of ``P`` indices)."""
    count = len(remove)
    rows = support.unsqueeze(0).repeat(count, 1)
    extra = torch.zeros(count, support.numel() + 1, dtype=torch.bool)  # the last column takes the -1s
    extra[torch.arange(count), torch.tensor(add, dtype=torch.long)] = True
    dropped = torch.zeros_like(extra)
    dropped[torch.arange(count), torch.tensor(remove, dtype=torch.long)] = True
    return (rows | extra[:, :-1]) & ~dropped[:, :-1]


def _best_of(grams: FoldGrams, supports: torch.Tensor) -> torch.Tensor:
    return supports[int(torch.argmin(grams.fit_residual(supports)))]


def _swap_descent(grams: FoldGrams, support: torch.Tensor, free) -> torch.Tensor:
    """Single swaps (one selected free term out, one unselected in) while the residual drops."""
    value = None
    for _ in range(4 * len(free)):
        flags = support.tolist()
        inside = [j for j in free if flags[j]]
        outside = [j for j in free if not flags[j]]
        if not inside or not outside:
            break
        # row 0 is the support itself (-1: no change): one batched solve per round
        candidates = _with(support, [-1] + [i for i in inside for _ in outside], [-1] + outside * len(inside))
        residuals = grams.fit_residual(candidates)
        value = float(residuals[0]) if value is None else value
        index = int(torch.argmin(residuals[1:])) + 1
        if float(residuals[index]) >= value * (1 - 1e-12):
            break
        support, value = candidates[index], float(residuals[index])
    return support


def _enumerate(base: torch.Tensor, free, k: int) -> torch.Tensor:
    index = torch.tensor(list(itertools.combinations(free, k)), dtype=torch.long)
    supports = base.unsqueeze(0).repeat(index.shape[0], 1)
    supports.scatter_(1, index, True)
    return supports


def select_support(grams: FoldGrams, exempt: torch.Tensor, max_size: int = 8, search: str = "swap",
                   starts: Optional[torch.Tensor] = None, budget: int = 200_000) -> dict:
    """Support by best subsets and the one-standard-error rule on held-out time windows.

    Returns a dict: ``support (J,) bool``, ``size`` (free terms), ``cv (K+1,)`` mean held-out residual
    per size, ``cv_se`` standard errors, ``supports`` ``(K+1, J)`` (the best subset of each size),
    ``held_out_residual`` (the chosen support's, relative, square-rooted).
    """
    max_size = check_int("max_terms", max_size, minimum=1)
    best = best_subsets(grams, exempt, max_size, search, starts, budget)
    sizes = sorted(best)
    supports = torch.stack([best[k] for k in sizes])
    choice = choose_size(grams.cross_validation(supports))
    chosen = choice["index"]
    return {"support": supports[chosen], "size": sizes[chosen], "cv": choice["mean"], "cv_se": choice["se"],
            "supports": supports, "held_out_residual": math.sqrt(max(float(choice["mean"][chosen]), 0.0))}


#: a smaller support is preferred while its held-out residual (squared) is within this factor of the
#: lowest: extra terms that absorb the systematic error of the discretisation (the same in every time
#: window) lower it by tens of percent, a missing term raises it several-fold (scripts/wsindy_suite.py)
SIZE_FACTOR = 2.0


def choose_size(errors: torch.Tensor, factor: float = SIZE_FACTOR) -> dict:
    """Size from held-out residuals ``(K+1, folds)`` of the best subsets of sizes 0..K: the smallest size
    whose mean lies within ``factor`` times the lowest mean (and at least within one standard error of it)."""
    mean = errors.mean(-1)
    se = errors.std(-1) / math.sqrt(errors.shape[-1])
    lowest = int(torch.argmin(mean))
    bound = max(float(mean[lowest]) * factor, float(mean[lowest] + se[lowest]))
    index = next(i for i in range(len(mean)) if float(mean[i]) <= bound)
    return {"index": index, "mean": mean, "se": se}
