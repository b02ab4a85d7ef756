"""WSINDy: building blocks against closed forms and brute force, identification, conformance, CLI."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch

from torchmf import systems, wsindy
from torchmf.grid import Grid
from torchmf.wsindy import library as library_module
from torchmf.wsindy.mstls import RankDeficientError, check_columns, mstls
from torchmf.wsindy.test_functions import AxisTestFunctions, TestFunctions, phi

system_module = importlib.import_module("torchmf.wsindy.system")
histogram_module = importlib.import_module("torchmf.wsindy.histogram")


# -- test functions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2])
def test_phi_derivatives_match_finite_differences(order):
    v = torch.linspace(-0.9, 0.9, 181, dtype=torch.float64)
    step = 1e-5
    if order == 1:
        numeric = (phi(v + step, 4, 5, 0.25) - phi(v - step, 4, 5, 0.25)) / (2 * step)
    else:
        numeric = (phi(v + step, 4, 5, 0.25) - 2 * phi(v, 4, 5, 0.25) + phi(v - step, 4, 5, 0.25)) / step ** 2
    assert torch.allclose(phi(v, 4, 5, 0.25, order), numeric, atol=1e-4 * (10 if order == 2 else 1))


def test_test_function_integral_matches_closed_form():
    # sum_j h phi(x_j - c) -> m h * sqrt(pi) Gamma(p+1) / Gamma(p+3/2)
    axis = AxisTestFunctions(401, 0.01, 100, 5, 1000)
    exact = 100 * 0.01 * math.sqrt(math.pi) * math.gamma(6) / math.gamma(6.5)
    assert axis.count == 1
    assert abs(float(axis.matrix(0).sum()) - exact) < 1e-10


def test_integration_by_parts_on_smooth_fields():
    # <d_x psi, F> = -<psi, d_x F> and <d_t psi, F> = -<psi, d_t F> for smooth F (test functions vanish at the ends)
    x = torch.linspace(-3, 3, 241, dtype=torch.float64)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    field = torch.sin(2 * xx) * torch.exp(tt)
    tests = TestFunctions([AxisTestFunctions(241, float(x[1] - x[0]), 30, 5, 7)], AxisTestFunctions(101, 0.01, 10, 3, 3))
    left = tests.integrate(field, 0, [1])
    right = -tests.integrate(2 * torch.cos(2 * xx) * torch.exp(tt), 0, [0])
    assert torch.allclose(left, right, atol=1e-6 * float(right.abs().max()))
    assert torch.allclose(tests.integrate(field, 1, [0]), -tests.integrate(field, 0, [0]), rtol=2e-3, atol=1e-6)


# -- histogram ----------------------------------------------------------------------------------------
def test_histogram_is_normalized_nearest_grid_point_count():
    generator = torch.Generator().manual_seed(0)
    positions = torch.rand(3, 2, 500, 1, generator=generator, dtype=torch.float64) * 2 - 1
    grid = Grid(-1, 1, 21)
    density = wsindy.histogram(positions, grid)
    assert density.shape == (2, 21)
    assert torch.allclose(density.sum(-1) * grid.spacing[0], torch.ones(2, dtype=torch.float64))
    nearest = torch.round((positions[..., 0] + 1) / 0.1).long()
    brute = torch.zeros(2, 21, dtype=torch.float64)
    for m in range(3):
        for t in range(2):
            brute[t] += torch.bincount(nearest[m, t], minlength=21) / 500 / 3
    assert torch.allclose(density * 0.1, brute)


def test_measurement_noise_has_the_requested_ratio():
    data = (torch.randn(1, 3, 20000, 1, dtype=torch.float64) + 2) * torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    noisy = wsindy.add_measurement_noise(data, 0.1, seed=3)
    ratio = float((noisy - data).norm() / data.norm())
    assert abs(ratio - 0.1) < 0.003
    assert torch.equal(noisy, wsindy.add_measurement_noise(data, 0.1, seed=3))
    # default: one noise level for all times (the RMS over the whole experiment)
    level = (noisy - data).std(dim=(0, 2, 3))
    expected = 0.1 * float(data.pow(2).mean().sqrt())
    assert torch.allclose(level, torch.full_like(level, expected), rtol=0.03)
    # per_time: the level follows the RMS of each time
    per_time = wsindy.add_measurement_noise(data, 0.1, seed=3, per_time=True)
    level = (per_time - data).std(dim=(0, 2, 3))
    assert torch.allclose(level, 0.1 * data.pow(2).mean(dim=(0, 2, 3)).sqrt(), rtol=0.03)


# -- convolutions -----------------------------------------------------------------------------------------
def _direct_convolution(density, grid, term):
    nodes = grid.nodes(dtype=torch.float64).reshape(-1, grid.dim)
    kernel = term.gradient(nodes.unsqueeze(1) - nodes.unsqueeze(0))  # (G, G, d)
    masses = density.reshape(density.shape[0], -1) * grid.cell_volume
    return torch.einsum("abd,tb->tad", kernel, masses).reshape(density.shape + (grid.dim,))


@pytest.mark.parametrize("dim,convolution", [(1, "fft"), (2, "fft"), (2, "svd")])
def test_interaction_fields_match_direct_sums(dim, convolution):
    generator = torch.Generator().manual_seed(1)
    grid = Grid(-1, 1, 24 if dim == 1 else 14, dim=dim)
    density = torch.rand((3,) + grid.shape, generator=generator, dtype=torch.float64)
    density[(slice(None),) + (slice(0, 3),) * dim] = 0  # an empty corner exercises the cropped FFT box
    terms = [library_module.InteractionTerm("power", exponent=1), library_module.InteractionTerm("cutoff_log", cutoff=0.01),
             library_module.InteractionTerm("power", exponent=3)]
    fields = list(system_module.interaction_fields(density, grid, terms, convolution=convolution, svd_tolerance=1e-13))
    for term, field in zip(terms, fields):
        expected = density.unsqueeze(-1) * _direct_convolution(density, grid, term)
        assert torch.allclose(field, expected, atol=1e-10 * float(expected.abs().max())), term.name


@pytest.mark.parametrize("dim,convolution,fft_dtype", [(1, "fft", None), (2, "fft", None), (2, "svd", None),
                                                       (2, "fft", torch.float32)])
def test_interaction_columns_match_direct_quadrature(dim, convolution, fft_dtype, monkeypatch):
    # the blocked, cropped FFT path against brute-force convolutions integrated by TestFunctions
    monkeypatch.setattr(system_module, "_time_block", lambda *args: 2)  # several time blocks, one partial
    generator = torch.Generator().manual_seed(4)
    grid = Grid(-1, 1, 40 if dim == 1 else 22, dim=dim)
    density = torch.rand((7,) + grid.shape, generator=generator, dtype=torch.float64)
    density[(slice(None),) + (slice(0, 4),) * dim] = 0
    terms = [library_module.InteractionTerm("power", exponent=1), library_module.InteractionTerm("cutoff_log", cutoff=0.01)]
    spatial = [AxisTestFunctions(g, h, 5, 5, 3) for g, h in zip(grid.shape, grid.spacing)]
    tests = TestFunctions(spatial, AxisTestFunctions(7, 0.1, 2, 3, 1, name="time"))
    columns = system_module.interaction_columns(density, grid, terms, tests, convolution, 1e-13, fft_dtype)
    tolerance = 1e-5 if fft_dtype == torch.float32 else 1e-10
    for term, column in zip(terms, columns):
        product = density.unsqueeze(-1) * _direct_convolution(density, grid, term)
        expected = sum(tests.integrate(product[..., axis], 0, [int(a == axis) for a in range(dim)]) for axis in range(dim))
        assert column.dtype == torch.float64
        assert torch.allclose(column, expected, atol=tolerance * float(expected.abs().max())), term.name


def test_histogram_chunks_and_experiments_add_up(monkeypatch):
    # the chunked nearest-grid-point deposit (chunks smaller than one time slice) equals the brute-force count
    import torchmf.grid as grid_module

    monkeypatch.setattr(grid_module, "DEPOSIT_CHUNK", 37)
    generator = torch.Generator().manual_seed(5)
    positions = torch.rand(2, 3, 100, 2, generator=generator, dtype=torch.float32) * 2 - 1
    grid = Grid([-1, -1], [1, 1], [9, 11])
    density = wsindy.histogram(positions, grid)
    nearest = torch.round((positions.double() + 1) / torch.tensor(grid.spacing, dtype=torch.float64)).long()
    brute = torch.zeros(3, 9 * 11, dtype=torch.float64)
    for m in range(2):
        for t in range(3):
            brute[t] += torch.bincount(nearest[m, t, :, 0] * 11 + nearest[m, t, :, 1], minlength=99).double()
    assert torch.allclose(density.double() * grid.cell_volume, brute.reshape(3, 9, 11) / 200, atol=1e-6)


def test_low_rank_factors_are_exact_for_separable_kernels():
    x = torch.linspace(-1, 1, 30, dtype=torch.float64)
    kernel = torch.outer(x, x ** 2) + torch.outer(torch.ones_like(x), x)
    left, right = system_module.low_rank_factors(kernel)
    assert left.shape[1] == 2
    assert torch.allclose(left @ right.T, kernel, atol=1e-12)


# -- MSTLS and the rank check -------------------------------------------------------------------------------
def test_mstls_recovers_a_sparse_solution_and_least_squares_without_noise():
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(400, 12, generator=generator, dtype=torch.float64)
    truth = torch.zeros(12, dtype=torch.float64)
    truth[[1, 5, 9]] = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    rhs = matrix @ truth + 1e-4 * torch.randn(400, generator=generator, dtype=torch.float64)
    result = mstls(matrix, rhs)
    assert set(torch.nonzero(result["coefficients"]).reshape(-1).tolist()) == {1, 5, 9}
    assert torch.allclose(result["coefficients"], truth, atol=1e-4)
    assert float(result["losses"].min()) == float(result["losses"][result["thresholds"].tolist().index(result["threshold"])])


def test_rank_deficient_matrix_is_reported_with_its_condition_number():
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    matrix = torch.cat([matrix, (matrix[:, :1] + 2 * matrix[:, 1:2])], dim=1)
    with pytest.raises(RankDeficientError, match="condition number") as error:
        check_columns(matrix, ["a", "b", "c", "d"])
    assert error.value.condition_number > 1e12


def test_duplicate_and_zero_columns_name_the_terms():
    matrix = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="duplicate columns.*'a'.*'c'"):
        check_columns(torch.stack([matrix[:, 0], matrix[:, 1], 3 * matrix[:, 0]], 1), ["a", "b", "c"])
    with pytest.raises(ValueError, match="all-zero columns.*'b'"):
        check_columns(torch.stack([matrix[:, 0], torch.zeros(20, dtype=torch.float64), matrix[:, 2]], 1), ["a", "b", "c"])


# -- libraries ------------------------------------------------------------------------------------------------
def test_presets_have_the_paper_sizes_and_round_trip():
    assert len(wsindy.load_library("qanr_1d", 1)) == 24  # Table 3 / Table 5: G is 3368 x 24
    assert len(wsindy.load_library("keller_segel_2d", 2)) == 53  # Table 4 / Table 5: 6500 x 53
    table2 = wsindy.load_library("local_2d", 2)
    assert len(table2.of_kind("interaction")) == 7 and len(table2.of_kind("diffusion")) == 36
    for name, dim in (("default", 1), ("default", 2), ("keller_segel_2d", 2)):
        lib = wsindy.load_library(name, dim)
        assert wsindy.Library.from_spec(lib.spec(), dim).names == lib.names


def test_library_from_yaml_file(tmp_path):
    path = tmp_path / "lib.yaml"
    path.write_text("interaction:\n  - {type: power, exponent: 2}\n  - {type: cutoff_log, cutoff: 0.05}\n"
                    "local:\n  - {type: monomial, powers: [1]}\ndiffusion:\n  - {type: cosine, frequencies: [1]}\n")
    lib = wsindy.load_library(str(path), 1)
    assert lib.names == ["K:|x|^2", "K:[log|x|]_0.05", "dV/dx1:x^1", "D:cos(1x1)"]


def test_basis_gradients_match_autograd():
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    for basis in (library_module.Monomial([2, 3]), library_module.CosineProduct([1.0, 2.0])):
        (grad,) = torch.autograd.grad(basis.value(x).sum(), x)
        assert torch.allclose(basis.gradient(x), grad)
        axes = [x.detach()[:, 0], x.detach()[:, 1]]
        for derivative in (None, 0, 1):
            factors = basis.factors(axes, derivative)
            expected = basis.value(x.detach()) if derivative is None else grad[:, derivative]
            assert torch.allclose(factors[0] * factors[1], expected)


def test_cutoff_potential_matches_eq_5_6():
    term = library_module.InteractionTerm("cutoff_log", cutoff=0.01)
    r = torch.tensor([0.005, 0.02], dtype=torch.float64)
    expected = torch.tensor([math.log(0.01) - 1 + 0.5, math.log(0.02)], dtype=torch.float64)
    assert torch.allclose(term.potential.profile(r), expected)
    x = torch.tensor([[0.005, 0.0], [0.0, 0.02]], dtype=torch.float64)
    assert torch.allclose(term.gradient(x), torch.tensor([[100.0, 0.0], [0.0, 50.0]], dtype=torch.float64))


# -- identification ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qanr_data():
    return systems.get("qanr_1d", diffusion="none").simulate(n_particles=2000, seed=0, progress=False,
                                                            dtype=torch.float64)


def test_identify_qanr_selects_the_two_interaction_terms(qanr_data):
    model = wsindy.identify(qanr_data, "default")
    # the drift exactly; the constant diffusion is exempt from thresholding and kept >= 0 (tiny: sigma = 0)
    assert set(model.selected) - {"D:x^0"} == {"K:|x|^1", "K:|x|^2"}
    assert 0 <= model.selected.get("D:x^0", 0.0) < 1e-4
    truth = wsindy.TrueModel({"K:|x|^1": -1.0, "K:|x|^2": 0.5}, grad_K=lambda x: x - torch.sign(x))
    assert wsindy.tpr(model, truth.terms, kinds=("interaction", "local")) == 1.0
    assert wsindy.relative_errors(model, truth)["K"] < 0.01
    x = torch.linspace(-2, 2, 5, dtype=torch.float64).unsqueeze(-1)
    assert torch.equal(model.grad_V(x), torch.zeros_like(x)) and float(model.sigma(x).max()) < 0.015
    paper = wsindy.identify(qanr_data, "qanr_1d", grid_rule="union", trim=None, selection="mstls", regression="mstls",
                            ridge=0.0)
    assert set(paper.selected) == {"K:|x|^1", "K:|x|^2"}  # the paper's MSTLS, kept as an option
    restored = wsindy.WSINDyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert torch.allclose(restored.grad_K(x), model.grad_K(x)) and restored.selected == model.selected
    assert "K(x) = -1" in model.equation() and "|x|^2" in model.equation()


def test_model_simulate_compares_with_data_by_w2(qanr_data):
    from torchmf.metrics import w2

    model = wsindy.identify(qanr_data, "qanr_1d", test_functions="qanr_1d")
    start = qanr_data.positions[:, 0, :300]
    times = qanr_data.times[:11]
    again = model.simulate(start, times, dt=5e-3, seed=0, backend="dense", progress=False)
    truth = systems.get("qanr_1d").simulate(n_particles=300, times=times, seed=0, progress=False, dtype=torch.float64,
                                            initial_state=start)
    assert again.positions.shape == (1, 11, 300, 1)
    assert float(w2(again.positions[0, -1], truth.positions[0, -1])) < 0.01


def test_tpr_counts_false_positives_and_negatives():
    lib = wsindy.load_library("qanr_1d", 1)
    coefficients = torch.zeros(len(lib), dtype=torch.float64)
    coefficients[lib.names.index("K:|x|^1")] = -1
    coefficients[lib.names.index("D:x^0")] = 0.2
    model = wsindy.WSINDyModel(lib, coefficients)
    assert wsindy.tpr(model, {"K:|x|^1": -1, "K:|x|^2": 0.5}) == pytest.approx(1 / 3)
    assert wsindy.tpr(model, {"K:|x|^1": -1, "K:|x|^2": 0.5}, kinds=("interaction",)) == pytest.approx(0.5)
    assert torch.allclose(model.sigma(torch.zeros(1, 1, dtype=torch.float64)), torch.tensor([[math.sqrt(0.4)]],
                                                                                             dtype=torch.float64))


def test_conformance_on_the_authors_qanr_dataset(shared_dir):
    path = shared_dir / "data" / "wsindy-ips" / "qanr1D_N2000_nu0.mat"
    if not path.is_file():
        pytest.skip(f"the authors' conformance file is absent ({path})")
    from scipy.io import loadmat

    content = loadmat(str(path))
    positions = torch.from_numpy(np.ascontiguousarray(content["Xscell"][0, 0].transpose(2, 0, 1))).unsqueeze(0)
    times = torch.from_numpy(content["t"].reshape(-1).astype(np.float64))
    x = torch.linspace(-2, 2, 801, dtype=torch.float64).unsqueeze(-1)
    truth = x - torch.sign(x)
    # the authors' own code in Octave on this file: grad K error 3.1e-4 on [-2, 2], D = 3.1098e-5 (true D = 0)
    model = wsindy.identify(positions, "default", times=times)
    assert set(model.selected) - {"D:x^0"} == {"K:|x|^1", "K:|x|^2"} and model.info["reliable"]
    assert float((model.grad_K(x) - truth).norm() / truth.norm()) <= 3.1e-4  # measured 8.9e-6
    # the default grid covers the data (the authors' cuts it to mean +- 3 sd): D is 4.75e-5 there
    assert 0 <= model.selected.get("D:x^0", 0.0) <= 5e-5
    authors_grid = wsindy.identify(positions, "default", times=times, grid_rule="intersection")
    assert float((authors_grid.grad_K(x) - truth).norm() / truth.norm()) <= 3.1e-4
    assert 0 <= authors_grid.selected.get("D:x^0", 0.0) <= 3.11e-5


# -- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_identify_prints_the_equation(tmp_path, qanr_data, capsys):
    from torchmf.cli import main

    path = qanr_data.save(tmp_path / "qanr.h5")
    assert main(["identify", str(path), "--json", str(tmp_path / "model.json"), "--no-plot"]) == 0
    output = capsys.readouterr().out
    assert "K(x) = -1" in output and "|x|^2" in output
    saved = json.loads((tmp_path / "model.json").read_text())
    assert set(saved["selected"]) - {"D:x^0"} == {"K:|x|^1", "K:|x|^2"}
    assert main(["identify", str(path), "--library", "keller_segel_2d"]) == 2
    assert "d = 2" in capsys.readouterr().err
