"""Issue 23's held-out suite generator (plain numpy, scripts/wsindy_suite_systems.py): every fast force against the
direct O(N^2) sum, seeded simulations; the library's exponential, Gaussian and piecewise-linear interaction terms."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchmf import wsindy

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "wsindy_suite_systems.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("_wsindy_suite_systems", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_generator_does_not_import_torchmf():
    source = SCRIPT.read_text()
    assert "torchmf" not in source.replace("torchmf.wsindy", "").split('"""', 2)[2]  # the code after the docstring


@pytest.mark.parametrize("name", ["power_pair_well", "cubic_well", "quadratic_quartic_tilt", "linear_repulsion_even",
                                  "state_diffusion", "morse_1d", "gaussian_1d", "quartic_anisotropic_2d"])
def test_fast_forces_match_the_pairwise_sum(suite, name):
    system = suite.SYSTEMS[name]
    rng = np.random.default_rng(3)
    shape = (2, 600) if system.dim == 1 else (2, 600, 2)
    x = rng.standard_normal(shape)
    fast, direct = system.force(x), suite.pairwise_force(x, system.grad_k)
    tolerance = 1e-5 if name == "gaussian_1d" else 1e-12  # the Gaussian goes through a 4,096-cell grid
    assert np.abs(fast - direct).max() <= tolerance * np.abs(direct).max()


def test_simulations_are_seeded_and_shaped(suite):
    first, times = suite.simulate("cubic_well", 50, 2, seed=4, t_end=0.2)
    again, _ = suite.simulate("cubic_well", 50, 2, seed=4, t_end=0.2)
    other, _ = suite.simulate("cubic_well", 50, 2, seed=5, t_end=0.2)
    assert first.shape == (2, 11, 50, 1) and np.allclose(times, np.arange(11) * 0.02)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    names = set(wsindy.load_library("default", 1).names) | set(wsindy.load_library("default", 2).names)
    for system in suite.SYSTEMS.values():
        assert set(system.terms) <= names  # the true terms are named as in the default library


def test_exponential_gaussian_and_hat_terms_have_autograd_gradients_and_round_trip():
    spec = {"interaction": [{"type": "exponential", "length": 0.5}, {"type": "gaussian", "length": 0.4},
                            {"type": "piecewise_linear", "knots": 5, "range": 2.0}],
            "diffusion": [{"type": "monomial", "powers": [0, 0]}]}
    library = wsindy.load_library(spec, 2)
    assert library.nonparametric_names() == [f"K:hat(|x|-{c};0.5)" for c in ("0", "0.5", "1", "1.5")]
    x = torch.tensor([[0.3, -0.2], [1.1, 0.4], [-0.7, 0.9]], dtype=torch.float64, requires_grad=True)
    for term in library.terms[:-1]:
        value = term.value(x).sum()
        (gradient,) = torch.autograd.grad(value, x)
        assert torch.allclose(term.gradient(x.detach()), gradient, atol=1e-12), term.name
    r = torch.tensor([0.2, 0.7], dtype=torch.float64)
    assert torch.allclose(library.terms[0].potential.profile(r), torch.exp(-r / 0.5))
    assert wsindy.Library.from_spec(library.spec(), 2).names == library.names
    with pytest.raises(ValueError, match="'piecewise_linear' needs a 'range'"):
        wsindy.load_library({"interaction": [{"type": "piecewise_linear", "knots": 4}]}, 1)
    with pytest.raises(ValueError, match="needs a 'length'"):
        wsindy.load_library({"interaction": [{"type": "exponential"}]}, 1)


def test_gradient_hats_have_hat_shaped_derivatives_autograd_gradients_and_round_trip():
    library = wsindy.load_library({"interaction": [{"type": "piecewise_linear_gradient", "knots": 5, "range": 2.0}]}, 2)
    assert library.nonparametric_names() == [f"K:hat'(|x|-{c};0.5)" for c in ("0", "0.5", "1", "1.5")]
    x = torch.tensor([[0.3, -0.2], [1.1, 0.4], [-0.7, 0.9], [0.05, 0.02]], dtype=torch.float64, requires_grad=True)
    for term in library.terms:
        (gradient,) = torch.autograd.grad(term.value(x).sum(), x)
        assert torch.allclose(term.gradient(x.detach()), gradient, atol=1e-12), term.name
    r = torch.linspace(0, 2.5, 11, dtype=torch.float64)
    # K'(r) = hat at 0.5, half-width 0.5; K(r) = -int_r^inf K': -0.5 (its area) up to 0, 0 from 1 on
    middle = library.terms[1].potential
    assert torch.allclose(middle.profile_derivative(r), torch.clamp(1 - (r - 0.5).abs() / 0.5, min=0))
    assert float(middle.profile(torch.tensor([0.0], dtype=torch.float64))) == pytest.approx(-0.5)
    assert float(middle.profile(torch.tensor([0.5], dtype=torch.float64))) == pytest.approx(-0.25)
    assert float(middle.profile(torch.tensor([1.2], dtype=torch.float64))) == 0.0
    first = library.terms[0].potential  # at the origin only the falling half: K'(0+) = 1, area 0.25
    assert float(first.profile_derivative(torch.tensor([0.0], dtype=torch.float64))) == 1.0
    assert float(first.profile(torch.tensor([0.0], dtype=torch.float64))) == pytest.approx(-0.25)
    assert wsindy.Library.from_spec(library.spec(), 2).names == library.names
    with pytest.raises(ValueError, match="'piecewise_linear_gradient' needs a 'range'"):
        wsindy.load_library({"interaction": [{"type": "piecewise_linear_gradient", "knots": 4}]}, 1)
    with pytest.raises(ValueError, match="unknown keys \\['width'\\]"):
        wsindy.load_library({"interaction": [{"type": "piecewise_linear", "range": 1.0, "width": 2}]}, 1)


def test_the_library_yaml_of_the_docs_loads(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "wsindy.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "library.yaml").write_text(block)
    library = wsindy.load_library(str(tmp_path / "library.yaml"), 1)
    assert len(library.nonparametric_names()) == 22  # 11 hats in K and 11 in K'
    for name in ("K:|x|^1", "K:exp(-|x|/0.5)", "K:gauss(|x|/0.4)", "dV/dx1:x^3", "D:x^0", "D:x^2"):
        assert name in library.names
