r"""WSINDy for interacting particle systems (Messenger & Bortz; Algorithm 4.1).

From particle data ``(M, L, N, d)`` to the mean-field equation

.. math:: \partial_t u = \nabla\cdot(u\,\nabla K * u) + \nabla\cdot(u\,\nabla V) + \tfrac12\sum_{ij}\partial_{ij}(\sigma\sigma^T u)

by weak-form sparse regression:

1. histogram :math:`U_t` on a grid C (:mod:`.histogram`, one O(N) scatter),
2. separable test functions on query points (:mod:`.test_functions`),
3. the linear system :math:`Gw = b` with FFT convolutions on :math:`C - C` (:mod:`.system`),
4. MSTLS with the threshold loss (4.6) (:mod:`.mstls`),

returning a :class:`WSINDyModel` (:mod:`.model`). Libraries: :mod:`.library`; scores: :mod:`.scores`.

Example::

    from torchmf import systems, wsindy
    data = systems.get("qanr_1d").simulate(n_particles=4000, seed=0)
    model = wsindy.identify(data, library="qanr_1d", test_functions="qanr_1d")
    print(model.equation())
"""
from __future__ import annotations

import time
import warnings
from typing import Optional, Union

import torch
from tqdm.auto import tqdm

from .. import distributed
from .._validation import check_int, check_positive
from ..grid import Grid
from ..data import Trajectories
from .histogram import (GRID_RULES, add_measurement_noise, as_positions, default_grid, histogram, mass_left_out,
                        masked_positions)
from .library import PRESETS, Library, load_library
from .model import WSINDyModel
from .mstls import THRESHOLDINGS, RankDeficientError, check_columns, mstls, single_thread  # noqa: F401
from .regression import FOLDS, SELECTIONS, regress
from .halves import half_supports
from .kernel_check import affine_residual, nonparametric_gain, pair_distance_quantile
from .selection import FoldGrams, time_blocks
from .verdict import (MASS_LEFT_OUT, missing_terms, mstls_probabilities, resampled_l0_probabilities, reselect,
                      verdict)
from .scores import TrueModel, relative_errors, tpr
from .system import build_system
from .test_functions import AxisTestFunctions, TestFunctions, changepoint_support

__all__ = ["identify", "WSINDyModel", "Library", "load_library", "PRESETS", "TEST_FUNCTION_PRESETS",
           "RankDeficientError", "TrueModel", "tpr", "relative_errors", "add_measurement_noise", "histogram",
           "default_grid", "make_test_functions"]

#: Table 5 of the paper: support half-widths, degrees and strides of each example.
TEST_FUNCTION_PRESETS = {
    "local_2d": {"m_x": 31, "m_t": 16, "p_x": 5, "p_t": 3, "s_x": 10, "s_t": 5},
    "qanr_1d": {"m_x": 29, "m_t": 8, "p_x": 5, "p_t": 3, "s_x": 5, "s_t": 1},
    "keller_segel_2d": {"m_x": 25, "m_t": 8, "p_x": 5, "p_t": 3, "s_x": 8, "s_t": 1},
}
_TEST_FUNCTION_KEYS = {"m_x", "m_t", "p_x", "p_t", "s_x", "s_t", "tau"}


def make_test_functions(density: torch.Tensor, grid: Grid, dt: float, spec=None) -> TestFunctions:
    """Test functions for a histogram ``(L, *G)``.

    ``spec``: None (automatic), a preset name of :data:`TEST_FUNCTION_PRESETS`, or a dict with any of
    ``m_x, m_t`` (support half-widths in points; default: changepoint rule), ``p_x`` (5), ``p_t`` (3),
    ``s_x, s_t`` (strides; default ``max(1, round(m_x / 5))`` and ``max(1, round(m_t / 8))``), ``tau`` (2).
    """
    if spec is None:
        spec = {}
    elif isinstance(spec, str):
        if spec not in TEST_FUNCTION_PRESETS:
            raise ValueError(f"test_functions: expected a preset in {sorted(TEST_FUNCTION_PRESETS)} or a dict, "
                             f"but got {spec!r}")
        spec = TEST_FUNCTION_PRESETS[spec]
    if not isinstance(spec, dict):
        raise TypeError(f"test_functions: expected None, a preset name or a dict, but got {type(spec).__name__}")
    unknown = set(spec) - _TEST_FUNCTION_KEYS
    if unknown:
        raise ValueError(f"test_functions: unknown keys {sorted(unknown)}; expected {sorted(_TEST_FUNCTION_KEYS)}")
    p_x, p_t = spec.get("p_x", 5), spec.get("p_t", 3)
    tau = check_positive("tau", spec.get("tau", 2.0))
    length = density.shape[0]
    if length < 7:
        raise ValueError(f"times: too few time points ({length}) for a test-function support of at least 7 points")
    m_t = spec.get("m_t")
    if m_t is None:
        m_t = changepoint_support(density, 0, p_t, tau, min_points=3, max_points=max(3, (length - 1) // 4))
    m_x = spec.get("m_x")
    if m_x is None:
        m_x = [changepoint_support(density, 1 + axis, p_x, tau) for axis in range(grid.dim)]
    elif not isinstance(m_x, (list, tuple)):
        m_x = [m_x] * grid.dim
    m_x = [check_int("m_x", m, minimum=1) for m in m_x]
    s_x = spec.get("s_x", max(1, round(max(m_x) / 5)))
    s_t = spec.get("s_t", max(1, round(m_t / 8)))
    spatial = [AxisTestFunctions(g, h, m, p_x, s_x, name=f"x{axis + 1}")
               for axis, (g, h, m) in enumerate(zip(grid.shape, grid.spacing, m_x))]
    return TestFunctions(spatial, AxisTestFunctions(length, dt, check_int("m_t", m_t, 1), p_t, s_t, name="time"))


def identify(trajectories, library: Union[str, dict, Library, None] = "default", *, times=None,
             grid: Optional[Grid] = None, grid_shape=None, test_functions=None, thresholds=None,
             convolution: str = "fft", dtype: torch.dtype = torch.float64, fft_dtype: Optional[torch.dtype] = None,
             max_condition: float = 1e12, sharded: bool = False, grid_rule: str = "union", crop: bool = False,
             trim: Optional[float] = 0.01, regression: str = "constrained", thresholding: str = "paper",
             exempt=None, ridge: float = 1e-3, ensemble: int = 20, ensemble_seed: int = 0,
             selection: str = "l0", max_terms: int = 8, halves: bool = True, progress: bool = False) -> WSINDyModel:
    """Identify :math:`(K, V, \\sigma)` from particle data by WSINDy (Algorithm 4.1).

    Arguments:
        trajectories: :class:`~torchmf.data.Trajectories` or positions ``(M, L, N, d)`` (then ``times``);
            a Trajectories with a ``mask`` (lost particles, varying counts) weighs each frame's histogram
            by its observed particles.
        library: preset name (:data:`~torchmf.wsindy.library.PRESETS`), spec dict, YAML path or :class:`Library`.
        times: ``(L,)`` uniformly spaced recording times (taken from ``trajectories`` when it is one).
        grid: the computational grid C (free space; every particle within half a cell of its box,
            unless ``crop``). Default: by ``grid_rule`` from mean +- 3 standard deviations, 256
            points in 1-D, 128 per axis otherwise (``grid_shape`` overrides).
        test_functions: None (changepoint rule), a preset of :data:`TEST_FUNCTION_PRESETS`, or a dict.
        thresholds: candidate sparsity thresholds (default ``logspace(-4, 0, 100)``).
        convolution: ``"fft"`` or ``"svd"`` (2-D low-rank split), see :mod:`.system`.
        dtype: precision of the regression (default float64; the histogram is built in the data's dtype).
        fft_dtype: precision of the interaction convolutions (default: ``dtype``), see :func:`.system.build_system`.
        max_condition: largest accepted condition number of the column-normalised G.
        sharded: ``trajectories`` is this rank's share ``(M, L, N_r, d)`` of an ensemble split over a
            ``torch.distributed`` process group (launch with ``torchrun``): the grid's box and the
            histogram are pooled over ranks (one ``(L, *G)`` all-reduce, independent of ``N``) and
            every rank then builds the same system and returns the same model. Ranks must agree on
            ``M``, ``L``, ``d``, the times and ``grid``; a rank rejecting its data makes all raise.
        grid_rule: rule of the default grid, ``"union"`` (default: mean +- 3 sd widened to hold every
            particle, nothing is cropped) or ``"intersection"`` (cut to the data's range, the authors'
            rule; it crops the tails, which biases K by a few percent on skewed data, issue 23), see
            :func:`.histogram.default_grid`. A ``UserWarning`` is raised when more than 1% of the
            mass is left out at some time (:data:`MASS_WARNING`).
        crop: particles outside ``grid`` are left out of the histogram instead of raising; the
            fraction left out is ``info["mass_left_out"]`` (mean and largest over time).
        trim: drop the test functions (rows of G) where :math:`\\langle\\psi_k, U\\rangle` is below
            ``trim`` times its largest value (the authors use 0.01): rows that see almost no data
            carry mostly noise. None keeps every row.
        regression: ``"mstls"`` (the paper's MSTLS) or ``"constrained"`` (MSTLS with the ``exempt``
            terms never thresholded and constrained to be ``>= 0``, as the authors' STLSQP).
        thresholding: ``"paper"`` (eqs. 4.4-4.5) or ``"relative"`` (scale-invariant), see :func:`.mstls.mstls`.
        exempt: term names exempt from thresholding and kept ``>= 0`` under ``regression="constrained"``
            (default: the library's constant diffusion terms).
        ridge: Tikhonov weight on the unit-column coefficients of the thresholding path (the
            authors' ``gamma``): with collinear columns the least-squares start has large
            cancelling coefficients that send MSTLS down a wrong path; the model is the plain fit
            on the support found. 0 turns it off.
        ensemble: row-bootstrap resamples of the verdict (default 20): ``info["inclusion_probabilities"]``
            (term name -> fraction of resamples whose selection keeps it, :mod:`.verdict`); 0 skips
            them (the verdict then judges without the stability check).
        ensemble_seed: seed of the resampling.
        selection: how the support is chosen, see :mod:`.regression`: ``"l0"`` (default: best subsets,
            size by held-out time windows), ``"l0_exact"``, ``"mstls"`` (the paper's MSTLS with
            ``regression``, ``thresholding``, ``ridge``), ``"stability"``, ``"least_squares"``.
        max_terms: largest number of selected (non-exempt) terms the ``l0`` selections consider.
        halves: the verdict also selects on each half of the particles (:mod:`.halves`; the second
            half only when the first misses the support: on a resolved support one more histogram and
            weak system, about the cost of G in 2-D, a few percent in 1-D).
        progress: a progress bar over the phases (histogram, weak system, selection, verdict).

    Every result carries a verdict in ``info`` (:func:`.verdict.verdict`): ``"reliable"`` (bool),
    ``"reasons"`` (why not: unstable terms, halves that disagree, missing terms, cropped mass,
    ill-conditioned selected columns, poor held-out residual), ``"missing_term_gains"``,
    ``"inclusion_probabilities"``, ``"held_out_residual"``.

    Returns:
        :class:`WSINDyModel` (coefficients ``(J,)`` float64 on the data's device; every step runs there,
        host synchronisations: the data checks, the box of the data, and a few per MSTLS iteration --
        the support test and the threshold chosen on the loss). Raises ``ValueError`` on bad data (NaN, particles outside ``grid``,
        non-uniform or too few times), degenerate libraries, and :class:`RankDeficientError` (a
        ``ValueError`` carrying ``condition_number``) when G is rank deficient.
    """
    started = time.perf_counter()
    for flag, value in (("sharded", sharded), ("halves", halves), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, but got {type(value).__name__}")
    options = _regression_options(regression, thresholding, trim, ensemble, grid_rule, selection, ridge)
    failure = None
    weights = observed = None
    try:
        if isinstance(trajectories, Trajectories) and trajectories.mask is not None:
            # lost tracks / varying counts: each frame's histogram weighs its observed particles
            if sharded:
                raise ValueError("trajectories: masked data (missing entries) are not supported with sharded=True")
            positions, weights, observed = masked_positions(trajectories)
        else:
            positions = as_positions(trajectories)
    except (ValueError, TypeError) as error:
        failure = error
    if sharded:  # every rank raises when one rank's data are bad: no rank is left waiting in a collective
        distributed.raise_together(failure)
    elif failure is not None:
        raise failure
    if times is None:
        if not hasattr(trajectories, "times"):
            raise ValueError("times: pass the recording times (L,) when trajectories is a tensor")
        times = trajectories.times
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
    if times.numel() != positions.shape[1]:
        raise ValueError(f"times: expected {positions.shape[1]} entries (L), but got {times.numel()}")
    if times.numel() < 2:
        raise ValueError(f"times: too few time points ({times.numel()}) for the test-function support")
    steps = times.diff()
    dt = float(steps.mean())
    if dt <= 0 or float((steps - dt).abs().max()) > 1e-3 * dt:
        raise ValueError("times: expected uniformly spaced, increasing recording times (the time quadrature "
                         "and test functions live on a regular time grid)")
    dim = positions.shape[-1]
    library = load_library(library, dim)
    exempt = _exempt_mask(library, regression, exempt)
    if sharded:
        distributed.check_same("trajectories", (positions.shape[0], positions.shape[1], dim, times.tolist()))
        distributed.check_same("grid", repr(grid))
    given = grid is not None
    if not given:
        grid = default_grid(positions if observed is None else observed, grid_shape, sharded=sharded, rule=grid_rule)
    crop = _cropping(crop, given, grid_rule)
    density = histogram(positions, grid, check=given, sharded=sharded, weights=weights, crop=crop)
    left_out = mass_left_out(density, grid) if crop else None
    after_histogram = time.perf_counter()
    bar = tqdm(total=4, disable=not progress, desc="identify: weak system", leave=False)
    bar.update()
    density = density.to(dtype)
    tests = make_test_functions(density, grid, dt, test_functions)
    matrix, rhs = build_system(density, grid, library, tests, convolution=convolution, fft_dtype=fft_dtype)
    untrimmed = (matrix, rhs)  # the halves' check derives the second half's linear entries from it (:mod:`.halves`)
    time_index = tests.time_index()
    keep = None
    if trim is not None:  # rows whose test function sees almost no mass
        mass = tests.integrate(density, 0, [0] * grid.dim)
        keep = mass >= trim * mass.max()
        matrix, rhs, time_index = matrix[keep], rhs[keep], time_index[keep.cpu()]
    after_system = time.perf_counter()
    bar.set_description(f"identify: {selection} selection")
    bar.update()
    if not bool(torch.isfinite(matrix).all()) or not bool(torch.isfinite(rhs).all()):
        raise ValueError("library: G or b has NaN/inf entries (a library term overflows on the grid's domain)")
    with single_thread(matrix.device):
        kappa = check_columns(matrix, library.names, max_condition)
        nonnegative = exempt if regression == "constrained" else None
        # the hats of a nonparametric K are one function: in every support, not sign-constrained
        exempt = exempt | torch.tensor([n in library.nonparametric_names() for n in library.names])
        result = regress(matrix, rhs, time_index, selection=selection, exempt=exempt, nonnegative=nonnegative,
                         thresholds=thresholds, thresholding=thresholding, ridge=ridge, max_terms=max_terms,
                         seed=ensemble_seed)
        after_selection = time.perf_counter()
        bar.set_description(f"identify: verdict ({options['ensemble']} resamples, halves)")
        bar.update()
        probabilities = _probabilities(matrix, rhs, result, selection, options["ensemble"], ensemble_seed,
                                       thresholding=thresholding, exempt=exempt, nonnegative=nonnegative, ridge=ridge)
        half_selections = None
        if halves and options["ensemble"] and not sharded:  # the particles' sampling variability (:mod:`.halves`)
            def select(half_matrix, half_rhs, half_time_index):
                if "best_supports" in result:  # l0: searched from the full data's best subsets
                    grams = FoldGrams(half_matrix, half_rhs, time_blocks(half_time_index.to(half_matrix.device), FOLDS),
                                      FOLDS)
                    return reselect(grams, exempt.cpu(), result["best_supports"], result["chosen_index"])
                return regress(half_matrix, half_rhs, half_time_index, selection=selection, exempt=exempt,
                               nonnegative=nonnegative, thresholds=thresholds, thresholding=thresholding, ridge=ridge,
                               max_terms=max_terms, seed=ensemble_seed)["support"]
            half_selections = half_supports(positions, weights, grid, library, tests, keep, crop, dtype,
                                            convolution, fft_dtype, select, full=untrimmed,
                                            reference=result["support"])
        # a term left out that predicts held-out time windows better (:func:`.verdict.missing_terms`)
        gains = missing_terms(matrix, rhs, time_index, result["support"], exempt)
        kernel_gain = None
        if grid.dim == 1 and not sharded and library.of_kind("interaction") and not library.nonparametric_names():
            # an interaction outside the library: a nonparametric K predicts held-out times better (:mod:`.kernel_check`)
            kernel_gain = nonparametric_gain(matrix, rhs, time_index, result["support"], density, grid, tests, keep,
                                             pair_distance_quantile(positions, ensemble_seed))
        affine = None
        if library.of_kind("interaction"):  # is c|x|^2 in K exchangeable with a linear force in V? (:mod:`.kernel_check`)
            selected = result["support"].cpu().tolist()
            quadratic = [library.names[i] for i in library.of_kind("interaction") if selected[i]
                         and (library.terms[i].profile in ("hat", "hat_gradient")
                              or (library.terms[i].profile == "power" and library.terms[i].exponent == 2))]
            affine = (affine_residual(density, grid, tests, keep), quadratic)
        judged = verdict(library.names, result["coefficients"], probabilities, matrix, result["held_out_residual"],
                         None if left_out is None else float(left_out.max()), result["support"], half_selections, gains,
                         kernel_gain, affine)
    bar.update()
    bar.close()
    finished = time.perf_counter()
    info = {"condition_number": kappa, "threshold": result["threshold"], "residual": result["residual"],
            "size_G": list(matrix.shape), "test_functions": tests.describe(), "grid": repr(grid),
            "seconds": {"histogram": after_histogram - started, "system": after_system - after_histogram,
                        "regression": finished - after_system, "selection": after_selection - after_system,
                        "verdict": finished - after_selection, "total": finished - started},
            "least_squares": result["least_squares"].tolist(),
            "held_out_residual": result["held_out_residual"], "selection": dict(result["details"], method=selection),
            "options": {"grid_rule": grid_rule, "crop": crop, "trim": trim, "regression": regression,
                        "thresholding": thresholding, "ridge": ridge, "exempt": [n for n, e in zip(library.names, exempt.tolist()) if e]},
            "nonparametric": bool(library.nonparametric_names())}
    if left_out is not None:
        info["mass_left_out"] = {"mean": float(left_out.mean()), "max": float(left_out.max())}
        if float(left_out.max()) > MASS_LEFT_OUT:
            warnings.warn(f"trajectories: {float(left_out.max()):.1%} of the mass lies outside the grid at some time "
                          f"(more than {MASS_LEFT_OUT:.0%}); the cropped tails bias K -- use grid_rule='union' "
                          f"(the default) or a wider grid", UserWarning, stacklevel=2)
    info.update(judged)  # reliable, reasons, inclusion_probabilities, selected_condition, held_out_residual
    if probabilities is not None:
        info["ensemble"] = {"resamples": options["ensemble"], "seed": ensemble_seed}
    return WSINDyModel(library, result["coefficients"], grid, info)  # on the data's device


REGRESSIONS = ("mstls", "constrained")


def _probabilities(matrix, rhs, result: dict, selection: str, resamples: int, seed: int, **mstls_options):
    """Inclusion probabilities ``(J,)`` of the terms over ``resamples`` row resamples (None when 0)."""
    if not resamples:
        return None
    if selection in ("l0", "l0_exact"):
        return resampled_l0_probabilities(matrix, rhs, result["fold"], FOLDS, mstls_options["exempt"].cpu(),
                                          result["best_supports"], result["chosen_index"], resamples, seed)
    if selection == "least_squares":
        return torch.ones(matrix.shape[1], dtype=torch.float64)
    return mstls_probabilities(matrix, rhs, mstls_options["thresholding"], mstls_options["exempt"],
                               mstls_options["nonnegative"], mstls_options["ridge"], resamples, seed)


def _regression_options(regression, thresholding, trim, ensemble, grid_rule, selection="l0", ridge=0.0) -> dict:
    """Validate the discretisation and regression options of :func:`identify`."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection: expected one of {list(SELECTIONS)}, but got {selection!r}")
    if regression not in REGRESSIONS:
        raise ValueError(f"regression: expected one of {list(REGRESSIONS)}, but got {regression!r}")
    if thresholding not in THRESHOLDINGS:
        raise ValueError(f"thresholding: expected one of {list(THRESHOLDINGS)}, but got {thresholding!r}")
    if grid_rule not in GRID_RULES:
        raise ValueError(f"grid_rule: expected one of {list(GRID_RULES)}, but got {grid_rule!r}")
    if not (isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge >= 0):
        raise ValueError(f"ridge: expected a number >= 0, but got {ridge!r}")
    if trim is not None and not (isinstance(trim, (int, float)) and not isinstance(trim, bool) and 0 <= trim < 1):
        raise ValueError(f"trim: expected None or a fraction in [0, 1), but got {trim!r}")
    return {"ensemble": check_int("ensemble", ensemble, minimum=0)}


def _cropping(crop, given: bool, grid_rule: str) -> bool:
    """Crop when asked, and always on the default grid of the intersection rule (it may cut the data)."""
    if not isinstance(crop, bool):
        raise TypeError(f"crop: expected a bool, but got {type(crop).__name__}")
    return crop or (not given and grid_rule == "intersection")


def _exempt_mask(library: Library, regression: str, exempt) -> torch.Tensor:
    """``(J,)`` bool: the terms exempt from thresholding (none under MSTLS; by default the constant
    diffusion terms under the constrained regression)."""
    mask = torch.zeros(len(library), dtype=torch.bool)
    if regression != "constrained":
        if exempt is not None:
            raise ValueError("exempt: only used with regression='constrained'")
        return mask
    names = library.constant_diffusion_names() if exempt is None else exempt
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"exempt: expected a list of term names, but got {names!r}")
    unknown = sorted(set(names) - set(library.names))
    if unknown:
        raise ValueError(f"exempt: {unknown} are not terms of the library {library.name!r}")
    for name in names:
        mask[library.names.index(name)] = True
    return mask
