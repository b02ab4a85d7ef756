import math

import pytest
import torch

from torchmf.kernels import (GaussianKernel, LogPotential, MorsePotential, PeriodicKernel, PowerPotential,
                             QANRPotential, potential_from_spec)

KERNELS = [GaussianKernel(0.7, 2), PowerPotential(3.0, 0.5), PowerPotential(1.5), QANRPotential(), LogPotential(0.01),
           LogPotential(0.3), MorsePotential(1.0, 2.0, 0.8, 0.5)]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: type(k).__name__)
def test_gradient_matches_autograd(kernel):
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    (auto,) = torch.autograd.grad(kernel.value(x).sum(), x)
    assert torch.allclose(kernel.gradient(x.detach()), auto, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: type(k).__name__)
def test_gradient_vanishes_at_origin(kernel):
    assert torch.equal(kernel.gradient(torch.zeros(3, 2)), torch.zeros(3, 2))


def test_qanr_gradient_in_one_dimension_is_x_minus_sign():
    x = torch.linspace(-3, 3, 101, dtype=torch.float64).unsqueeze(-1)
    assert torch.allclose(QANRPotential().gradient(x), x - torch.sign(x))


def test_log_potential_is_continuous_at_cutoff_with_expected_slopes():
    kernel = LogPotential(0.05)
    r = torch.tensor([[0.05 - 1e-9, 0.0], [0.05 + 1e-9, 0.0]], dtype=torch.float64)
    values = kernel.value(r)
    assert abs(float(values[0] - values[1])) < 1e-6
    slope_inside = kernel.gradient(torch.tensor([[0.01, 0.0]], dtype=torch.float64))[0, 0]
    slope_outside = kernel.gradient(torch.tensor([[2.0, 0.0]], dtype=torch.float64))[0, 0]
    assert math.isclose(float(slope_inside), 1 / (2 * math.pi * 0.05), rel_tol=1e-12)
    assert math.isclose(float(slope_outside), 1 / (2 * math.pi * 2.0), rel_tol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_gaussian_integrates_to_one(dim):
    h = 0.4
    step = 0.05
    axis = torch.arange(-3, 3 + 1e-9, step, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(*([axis] * dim), indexing="ij"), -1)
    total = GaussianKernel(h, dim).value(points).sum() * step**dim
    assert abs(float(total) - 1) < 1e-6


def test_periodic_kernel_is_periodic_and_sums_images():
    base = GaussianKernel(0.6, 1)
    periodic = PeriodicKernel(base, 2.0, images=3)
    x = torch.tensor([[0.3], [2.3], [-1.7]], dtype=torch.float64)
    values = periodic.value(x)
    assert torch.allclose(values, values[0].expand(3))
    direct = sum(base.value(x[:1] + 2.0 * n) for n in range(-6, 7))
    assert torch.allclose(values[:1], direct, rtol=1e-12)
    gradient = periodic.gradient(x)
    assert torch.allclose(gradient, gradient[:1].expand(3, 1))


def test_potential_from_spec():
    assert isinstance(potential_from_spec({"name": "power", "exponent": 2}), PowerPotential)
    assert isinstance(potential_from_spec("qanr"), QANRPotential)
    with pytest.raises(ValueError, match="potential"):
        potential_from_spec("nope")
    with pytest.raises(TypeError, match="potential"):
        potential_from_spec(3)
