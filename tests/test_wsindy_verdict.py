"""Issue 23: the default grid covers the data, the l0 selection against brute force, and the verdict on every result."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from torchmf import systems, wsindy
from torchmf.data import Trajectories
from torchmf.wsindy.histogram import default_grid
from torchmf.wsindy.selection import FoldGrams, best_subsets, choose_size, select_support, time_blocks


@pytest.fixture(scope="module")
def qanr_data():
    return systems.get("qanr_1d", diffusion="constant").simulate(n_particles=2000, seed=1, progress=False,
                                                                dtype=torch.float64)


def _skewed(n=4000, length=31, seed=0):
    """A heavy right tail that mean +- 3 sd cuts (6% of the particles beyond), drifting slowly."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.where(torch.rand(n, generator=generator) < 0.9, 0.2 * torch.randn(n, generator=generator),
                        2.5 + 0.1 * torch.randn(n, generator=generator)).double()
    times = torch.linspace(0, 0.6, length, dtype=torch.float64)
    steps = [start]
    for _ in range(length - 1):
        steps.append(steps[-1] * 0.99 + 0.02 * torch.randn(n, generator=generator, dtype=torch.float64))
    return Trajectories(torch.stack(steps).reshape(1, length, n, 1), times)


# -- default grid -------------------------------------------------------------------------------------------------
def test_default_grid_covers_every_particle_and_the_cropping_rule_warns():
    data = _skewed()
    grid = default_grid(data.positions)
    assert grid.lower[0] <= float(data.positions.min()) and grid.upper[0] >= float(data.positions.max())
    model = wsindy.identify(data, "qanr_1d", ensemble=0)
    assert "mass_left_out" not in model.info and model.info["options"]["grid_rule"] == "union"
    with pytest.warns(UserWarning, match="outside the grid"):
        cropped = wsindy.identify(data, "qanr_1d", grid_rule="intersection", ensemble=0)
    tail = float((data.positions[0, 0] > 1.5).double().mean())  # the far mode, beyond mean + 3 sd at t = 0
    assert cropped.info["mass_left_out"]["max"] == pytest.approx(tail, abs=0.01) and tail > 0.05
    assert any("cropped mass" in reason for reason in cropped.info["reasons"])


# -- l0 selection --------------------------------------------------------------------------------------------------
def _collinear_system(seed, rows=300, noise=1e-3):
    """Columns x^1 .. x^7 on [0.2, 2] (x^2, x^3, x^4 nearly collinear) and a sparse truth."""
    generator = np.random.default_rng(seed)
    x = np.sort(generator.uniform(0.2, 2.0, rows))
    matrix = np.stack([x ** p * (1 + 0.05 * np.sin(7 * p * x)) for p in range(1, 8)], 1)
    truth = np.zeros(7)
    truth[[0, 2]] = [-1.0, 1 / 3]  # x and x^3, as the cubic held-out system
    rhs = matrix @ truth + noise * generator.standard_normal(rows) * np.linalg.norm(matrix @ truth) / math.sqrt(rows)
    return torch.from_numpy(matrix), torch.from_numpy(rhs), torch.arange(rows) // 30, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_subsets_match_brute_force_least_squares(seed):
    matrix, rhs, time_index, _ = _collinear_system(seed)
    grams = FoldGrams(matrix, rhs, time_blocks(time_index, 5), 5)
    exempt = torch.zeros(7, dtype=torch.bool)
    swap = best_subsets(grams, exempt, 4, "swap")
    exact = best_subsets(grams, exempt, 4, "exact")
    a, b = matrix.numpy(), rhs.numpy()
    for k in range(1, 5):
        residuals = {subset: np.linalg.lstsq(a[:, subset], b, rcond=None)[1].sum()
                     for subset in itertools.combinations(range(7), k)}
        best = min(residuals, key=residuals.get)
        assert sorted(torch.nonzero(exact[k])[:, 0].tolist()) == list(best)
        # the swap search is a local search: exact up to the true size; above it, never better than exact
        fit_swap, fit_exact = (float(grams.fit_residual(s[k][None])[0]) for s in (swap, exact))
        assert torch.equal(swap[k], exact[k]) if k <= 2 else fit_swap >= fit_exact * (1 - 1e-9)
        # the fit residual of the Gram-matrix solve is the normalised least-squares residual
        assert float(grams.fit_residual(exact[k][None])[0]) == pytest.approx(residuals[best] / (b @ b), rel=1e-6)


def test_held_out_windows_match_direct_fits_and_the_size_rule_finds_the_truth():
    matrix, rhs, time_index, truth = _collinear_system(3)
    fold = time_blocks(time_index, 5)
    grams = FoldGrams(matrix, rhs, fold, 5)
    support = torch.from_numpy(truth != 0)
    a, b = matrix.numpy(), rhs.numpy()
    for f in range(5):
        train, test = (fold != f).numpy(), (fold == f).numpy()
        w = np.linalg.lstsq(a[train][:, truth != 0], b[train], rcond=None)[0]
        direct = np.sum((a[test][:, truth != 0] @ w - b[test]) ** 2) / np.sum(b[test] ** 2)
        assert float(grams.cross_validation(support[None])[0, f]) == pytest.approx(direct, rel=1e-6)
    for search in ("swap", "exact"):
        chosen = select_support(grams, torch.zeros(7, dtype=torch.bool), 5, search)
        assert torch.equal(chosen["support"], support) and chosen["size"] == 2


def test_missing_term_gains_match_direct_fits_on_time_windows():
    from torchmf.wsindy.verdict import MISSING_TERM_FACTOR, missing_terms, verdict

    matrix, rhs, time_index, truth = _collinear_system(0, noise=1e-2)
    support = torch.tensor([True] + [False] * 6)  # the truth is x and x^3: x^3 left out
    exempt = torch.zeros(7, dtype=torch.bool)
    gains = missing_terms(matrix, rhs, time_index, support, exempt, windows=10)
    a, b = matrix.numpy(), rhs.numpy()
    window = time_index.numpy()  # 10 time indices: one window each

    def held_out(columns):  # (10,) relative residuals, each window predicted from the other nine
        out = []
        for f in range(10):
            train, test = window != f, window == f
            w = np.linalg.lstsq(a[train][:, columns], b[train], rcond=None)[0]
            out.append(np.sum((a[test][:, columns] @ w - b[test]) ** 2) / np.sum(b[test] ** 2))
        return np.array(out)

    base = held_out([0])
    for j in range(1, 7):
        direct = math.exp(np.mean(np.log(base) - np.log(held_out([0, j]))))
        assert float(gains[j]) == pytest.approx(direct, rel=1e-6)
    assert float(gains[0]) == 1.0  # selected terms have no gain
    assert float(gains[2]) > MISSING_TERM_FACTOR  # x^3, the true term left out (and its collinear neighbours)
    judged = verdict([f"x^{p}" for p in range(1, 8)], torch.tensor([1.0] + [0.0] * 6, dtype=torch.float64), None,
                     matrix, 0.1, None, support, None, gains)
    assert judged["reliable"] is False and any(r.startswith("missing terms") and "x^3" in r for r in judged["reasons"])
    full = torch.from_numpy(truth != 0)  # the true support: no term left out helps by the factor
    assert float(missing_terms(matrix, rhs, time_index, full, exempt).max()) < MISSING_TERM_FACTOR


def test_size_rule_is_the_smallest_within_the_factor_of_the_lowest():
    errors = torch.tensor([[0.9] * 5, [0.02] * 5, [0.0019] * 5, [0.0011] * 5, [0.001] * 5], dtype=torch.float64)
    assert choose_size(errors)["index"] == 2  # 0.0019 <= 2 x 0.001
    assert choose_size(errors, factor=1.5)["index"] == 3
    noisy = torch.tensor([[0.9] * 5, [0.004, 0.0, 0.0, 0.0, 0.0], [0.001] * 5], dtype=torch.float64)
    assert choose_size(noisy)["index"] == 1  # within one standard error of the lowest


def test_time_index_follows_the_row_order_of_the_test_functions(qanr_data):
    grid = default_grid(qanr_data.positions)
    density = wsindy.histogram(qanr_data.positions, grid).double()
    tests = wsindy.make_test_functions(density, grid, float(qanr_data.times[1]))
    field = torch.arange(density.shape[0], dtype=torch.float64).reshape(-1, 1).expand_as(density).clone()
    # <psi_k, t> / <psi_k, 1> is the time centre of psi_k (the test functions are symmetric in time)
    centre = tests.integrate(field, 0, [0]) / tests.integrate(torch.ones_like(field), 0, [0])
    assert torch.allclose(centre, tests.time_index().double(), atol=1e-9)


# -- verdict ---------------------------------------------------------------------------------------------------------
def test_every_result_carries_the_verdict_and_json_writes_it(qanr_data, tmp_path):
    model = wsindy.identify(qanr_data, "default")
    info = model.info
    assert info["reliable"] is True and info["reasons"] == []
    assert set(info["inclusion_probabilities"]) == set(model.library.names)
    for name in ("K:|x|^1", "K:|x|^2", "D:x^0"):
        assert info["inclusion_probabilities"][name] >= 0.9
    assert set(model.selected) == {"K:|x|^1", "K:|x|^2", "D:x^0"}
    # the first half finds the support: the second is not examined (the flag needs both to miss it)
    assert [set(half) for half in info["halves"]] == [set(model.selected)]
    assert "halves" not in wsindy.identify(qanr_data, "default", halves=False).info
    saved = json.loads(model.save(tmp_path / "model.json").read_text())
    assert saved["reliable"] is True and saved["reasons"] == [] and "inclusion_probabilities" in saved
    again = wsindy.identify(qanr_data, "default")
    assert torch.equal(again.coefficients, model.coefficients)
    assert again.info["inclusion_probabilities"] == info["inclusion_probabilities"]  # seeded


def test_a_library_without_the_model_is_not_reliable(qanr_data):
    # the repulsion alone, no attraction, no diffusion: the data cannot be described (measured 0.60)
    spec = {"interaction": [{"type": "power", "exponent": 1}], "local": [{"type": "monomial", "powers": [1], "axis": 0}]}
    model = wsindy.identify(qanr_data, spec)
    assert model.info["reliable"] is False
    assert any("poor held-out residual" in reason for reason in model.info["reasons"])


def test_bad_selection_options_are_named():
    data = _skewed(n=500)
    with pytest.raises(ValueError, match="selection: expected one of"):
        wsindy.identify(data, "qanr_1d", selection="lasso")
    with pytest.raises(ValueError, match="max_terms: expected an integer >= 1"):
        wsindy.identify(data, "qanr_1d", max_terms=0)
    with pytest.raises(TypeError, match="halves: expected a bool, but got str"):
        wsindy.identify(data, "qanr_1d", halves="yes")


def test_the_halves_split_the_particles_and_average_to_the_full_histogram(qanr_data):
    from torchmf.wsindy.halves import split_halves

    grid = default_grid(qanr_data.positions)
    full = wsindy.histogram(qanr_data.positions, grid)
    halves = split_halves(qanr_data.positions, None)  # M = 1: every other particle
    assert [h[0].shape for h in halves] == [(1, 101, 1000, 1)] * 2
    assert torch.allclose((wsindy.histogram(halves[0][0], grid) + wsindy.histogram(halves[1][0], grid)) / 2, full)
    stacked = torch.cat([qanr_data.positions, qanr_data.positions + 0.1])  # M = 2: one experiment each
    weights = torch.full(stacked.shape[:3], 1 / 2000, dtype=torch.float64)
    parts = split_halves(stacked, weights)
    assert torch.equal(parts[0][0], qanr_data.positions) and torch.equal(parts[1][0], qanr_data.positions + 0.1)
    single = split_halves(qanr_data.positions, weights[:1])  # weights renormalised per frame
    assert torch.allclose(single[0][1].sum(-1), torch.ones(1, 101, dtype=torch.float64))


@pytest.mark.parametrize("experiments, particles", [(1, 601), (3, 200)])
def test_the_second_half_system_from_the_full_one_equals_its_direct_assembly(qanr_data, experiments, particles):
    """Odd counts (601 particles; 3 experiments) make the halves unequal: U = (n_A U_A + n_B U_B) / n."""
    from torchmf.wsindy.halves import half_systems, split_halves
    from torchmf.wsindy.system import build_system

    positions = qanr_data.positions[:, ::4, :experiments * particles].reshape(experiments, -1, particles, 1)
    library = wsindy.load_library("default", 1)  # interaction, drift and diffusion columns
    grid = default_grid(positions)
    density = wsindy.histogram(positions, grid)
    tests = wsindy.make_test_functions(density, grid, 0.04, {"m_x": 12, "m_t": 3})
    full = build_system(density, grid, library, tests)
    derived = half_systems(positions, None, grid, library, tests, False, torch.float64, "fft", None, full=full)
    for (part, _), (matrix, rhs) in zip(split_halves(positions, None), derived):
        direct_matrix, direct_rhs = build_system(wsindy.histogram(part, grid), grid, library, tests)
        scale = direct_matrix.abs().amax(0)
        assert torch.allclose(matrix / scale, direct_matrix / scale, rtol=0, atol=1e-12)
        assert torch.allclose(rhs, direct_rhs, rtol=0, atol=1e-12 * float(direct_rhs.abs().max()))


def test_added_term_residuals_equal_the_batched_held_out_fits():
    matrix, rhs, time_index, truth = _collinear_system(1, noise=1e-2)
    grams = FoldGrams(matrix, rhs, time_blocks(time_index, 10), 10)
    for support in (torch.tensor([True] + [False] * 6), torch.from_numpy(truth != 0), torch.zeros(7, dtype=torch.bool)):
        candidates = support.unsqueeze(0) | torch.eye(7, dtype=torch.bool)  # row j: support + term j
        direct = grams.cross_validation(candidates)
        direct[support] = grams.cross_validation(support.unsqueeze(0))  # terms already in: the support's own
        assert torch.allclose(grams.added_term_residuals(support), direct, rtol=1e-7, atol=1e-12)


def test_the_second_half_is_examined_only_when_the_first_misses_the_support(qanr_data):
    from torchmf.wsindy.halves import half_supports

    positions = qanr_data.positions[:, ::4]
    library = wsindy.load_library("default", 1)
    grid = default_grid(positions)
    tests = wsindy.make_test_functions(wsindy.histogram(positions, grid), grid, 0.04, {"m_x": 12, "m_t": 3})
    reference = torch.zeros(len(library), dtype=torch.bool)
    reference[0] = True
    calls = []

    def select(matrix, rhs, time_index):
        calls.append(matrix.shape)
        return reference.clone() if found else ~reference

    for found, examined in ((True, 1), (False, 2)):
        calls.clear()
        supports = half_supports(positions, None, grid, library, tests, None, False, torch.float64, "fft", None, select,
                                 reference=reference)
        assert len(supports) == len(calls) == examined


def test_added_term_residuals_on_a_singular_support_predict_nothing():
    matrix, rhs, time_index, _ = _collinear_system(2)
    window = time_blocks(time_index, 10)
    only_first = torch.where(window == 0, matrix[:, 0], torch.zeros_like(matrix[:, 0]))  # zero outside window 0
    matrix = torch.cat((matrix, only_first[:, None]), 1)
    grams = FoldGrams(matrix, rhs, window, 10)
    support = torch.zeros(8, dtype=torch.bool)
    support[[0, 7]] = True  # singular when fitted without window 0
    added = grams.added_term_residuals(support)
    assert torch.equal(added[:, 0], torch.ones(8, dtype=torch.float64))
    assert float(grams.cross_validation(support[None])[0, 0]) == 1.0
    assert torch.allclose(added[0], grams.cross_validation(support[None])[0]) and bool(torch.isfinite(added).all())


def test_pair_distance_quantile_matches_the_closed_form_of_uniform_points():
    from torchmf.wsindy.kernel_check import pair_distance_quantile

    # |U - U'| of two uniform points on [0, 1] has P(|U - U'| <= r) = 1 - (1 - r)^2: the 99% quantile is 0.9
    positions = torch.rand(2, 3, 5000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert pair_distance_quantile(positions, seed=0) == pytest.approx(0.9, abs=0.005)
    assert pair_distance_quantile(positions, seed=0, quantile=0.5) == pytest.approx(1 - math.sqrt(0.5), abs=0.01)
    assert pair_distance_quantile(positions, seed=1) == pair_distance_quantile(positions, seed=1)  # seeded


def test_a_kernel_outside_the_library_is_flagged_and_one_inside_is_not(qanr_data):
    from torchmf.wsindy.kernel_check import FACTOR

    inside = wsindy.identify(qanr_data, "default")  # K = -|x| + |x|^2/2 lies in the library
    assert inside.info["nonparametric_kernel_gain"] < FACTOR and inside.info["reliable"] is True
    spec = wsindy.load_library("default", 1).spec()
    spec["interaction"] = [{"type": "power", "exponent": 3}, {"type": "power", "exponent": 5}]  # neither |x| nor |x|^2
    outside = wsindy.identify(qanr_data, spec)  # measured gain 1.65
    assert outside.info["nonparametric_kernel_gain"] > FACTOR
    assert any(r.startswith("interaction outside the library") for r in outside.info["reasons"])
    hats = dict(spec, interaction=[{"type": "piecewise_linear", "knots": 8, "range": 3.0}])
    assert "nonparametric_kernel_gain" not in wsindy.identify(qanr_data, hats, ensemble=0).info  # already nonparametric


@pytest.mark.parametrize("dim", [1, 2])
def test_affine_residual_matches_the_interaction_column_of_the_weak_system(dim):
    """Against G's own |x|^2 column (FFT convolution) projected on the linear-force columns; 0 at a mean fixed at 0."""
    from torchmf.grid import Grid
    from torchmf.wsindy.kernel_check import affine_residual
    from torchmf.wsindy.system import build_system

    grid = Grid([-3.0] * dim, [3.0] * dim, [64] * dim, periodic=False)
    nodes = grid.nodes(dtype=torch.float64)  # (*G, d)
    times = torch.linspace(0, 1, 21, dtype=torch.float64)
    for drift, expected_zero in ((0.0, True), (1.0, False)):
        centre = drift * times.reshape(-1, *[1] * dim, 1) * torch.linspace(1, 0.5, dim, dtype=torch.float64)
        density = torch.exp(-((nodes - centre) ** 2).sum(-1) / 0.5) + 0.5 * torch.exp(-((nodes + 1 - centre) ** 2).sum(-1) / 0.2)
        density = density / (density.sum(tuple(range(1, dim + 1)), keepdim=True) * grid.cell_volume)
        if not drift:  # symmetric about the origin: the mean is 0 at every time
            density = 0.5 * (density + density.flip(tuple(range(1, dim + 1))))
        tests = wsindy.make_test_functions(density, grid, 0.05, {"m_x": 10, "m_t": 3})
        linear = [[1]] if dim == 1 else [[1, 0], [0, 1]]  # the force x_a along axis a
        spec = {"interaction": [{"type": "power", "exponent": 2}],
                "local": [{"type": "monomial", "powers": linear[a], "axis": a} for a in range(dim)]}
        matrix, _ = build_system(density, grid, wsindy.load_library(spec, dim), tests)
        column, basis = matrix[:, 0].numpy(), matrix[:, 1:].numpy()
        direct = np.linalg.norm(column - basis @ np.linalg.lstsq(basis, column, rcond=None)[0]) / np.linalg.norm(column)
        measured = affine_residual(density, grid, tests, None)
        assert measured == pytest.approx(direct, rel=1e-6, abs=1e-9)
        assert (measured < 1e-9) if expected_zero else (measured > 0.05)


def test_resampled_grams_equal_the_direct_construction_bit_for_bit():
    matrix, rhs, time_index, _ = _collinear_system(4)
    fold = time_blocks(time_index, 5)
    counts = torch.bincount(torch.randint(300, (300,), generator=torch.Generator().manual_seed(3)), minlength=300)
    direct = FoldGrams(matrix, rhs, fold, 5, weights=counts)
    reused = FoldGrams(matrix, rhs, fold, 5).resampled(counts)
    for name in ("tests", "total", "trains", "column_norms", "rhs_norm"):
        assert torch.equal(getattr(direct, name), getattr(reused, name)), name
