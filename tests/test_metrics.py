import math

import torch

from torchmf.grid import Grid
from torchmf.metrics import density_l2_error, moments, relative_error, smoothed_density, w2


def normal_quantiles(n, mean, std):
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (mean + std * math.sqrt(2) * torch.erfinv(2 * levels - 1)).unsqueeze(-1)


def test_w2_of_a_shift_is_the_shift():
    x = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(w2(x, x + 0.7)), 0.7, rel_tol=1e-12)
    y = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert math.isclose(float(w2(y, y + shift, method="exact")), 0.5, rel_tol=1e-9)


def test_w2_between_gaussians_closed_form_with_unequal_sizes():
    x, y = normal_quantiles(3000, 0.0, 1.0), normal_quantiles(2000, 1.0, 2.0)
    # W2^2 = (m1 - m2)^2 + (s1 - s2)^2 = 2
    assert abs(float(w2(x, y, method="sort")) - math.sqrt(2)) < 0.02


def test_sort_and_exact_agree_in_one_dimension():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 1, generator=g, dtype=torch.float64), torch.rand(300, 1, generator=g, dtype=torch.float64)
    assert math.isclose(float(w2(x, y, "sort")), float(w2(x, y, "exact")), rel_tol=1e-9)


def test_sinkhorn_is_close_to_exact_and_batched():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 400, 2, generator=g, dtype=torch.float64)
    y = torch.randn(2, 400, 2, generator=g, dtype=torch.float64) * 1.5 + 1.0
    exact = w2(x, y, "exact")
    approximate = w2(x, y, "sinkhorn")
    assert exact.shape == approximate.shape == (2,)
    assert torch.allclose(approximate, exact, rtol=0.03)


def test_smoothed_density_integrates_to_one_and_l2_error():
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(4)) * 0.5
    grid = Grid(-4, 4, 128, dim=2)
    density = smoothed_density(x, grid, 0.2)
    assert density.shape == (128, 128)
    assert abs(float(density.sum()) * grid.cell_volume - 1) < 1e-3
    assert float(density_l2_error(x, x, grid, 0.2)) < 1e-6
    far = x + 1.0
    assert float(density_l2_error(x, far, grid, 0.2)) > 0.1


def test_smoothed_density_of_one_point_is_the_gaussian():
    grid = Grid(-3, 3, 121)  # the node 0 is at x = 0
    density = smoothed_density(torch.zeros(1, 1, dtype=torch.float64), grid, 0.5)
    nodes = grid.axes(dtype=torch.float64)[0]
    expected = torch.exp(-nodes**2 / 0.5) / math.sqrt(2 * math.pi * 0.25)
    assert torch.allclose(density, expected, atol=1e-12)


def test_periodic_smoothed_density_integrates_to_one():
    x = torch.rand(3000, 1, generator=torch.Generator().manual_seed(5)) * 2
    grid = Grid(0, 2, 64, periodic=True)
    assert abs(float(smoothed_density(x, grid, 0.3).sum()) * grid.cell_volume - 1) < 1e-4


def test_moments_and_relative_error():
    x = torch.randn(3, 100, 2, dtype=torch.float64)
    stats = moments(x)
    assert torch.allclose(stats["covariance"][1], torch.cov(x[1].T))
    assert torch.allclose(stats["mean"], x.mean(1))
    assert math.isclose(float(relative_error(torch.tensor([1.1, 0.0]), torch.tensor([1.0, 0.0]))), 0.1, rel_tol=1e-6)
