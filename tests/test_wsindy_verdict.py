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
    assert [set(half) for half in info["halves"]] == [set(model.selected)] * 2  # both halves agree here
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
