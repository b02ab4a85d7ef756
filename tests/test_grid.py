import pytest
import torch

from torchmf.grid import Grid, GridConvolution


def test_deposit_conserves_mass_and_batches():
    grid = Grid([-2, -2], [2, 2], [17, 9])
    x = torch.rand(3, 500, 2, generator=torch.Generator().manual_seed(0)) * 3.8 - 1.9
    for scheme in ("cic", "ngp"):
        masses = grid.deposit(x, scheme=scheme)
        assert masses.shape == (3, 17, 9)
        assert torch.allclose(masses.sum((-1, -2)), torch.ones(3), atol=1e-6)
    weights = torch.rand(3, 500)
    assert torch.allclose(grid.deposit(x, weights).sum((-1, -2)), weights.sum(-1), rtol=1e-5)


def test_cic_deposit_of_one_particle_splits_linearly():
    grid = Grid(0.0, 1.0, 11)  # spacing 0.1
    masses = grid.deposit(torch.tensor([[0.125]], dtype=torch.float64))
    expected = torch.zeros(11, dtype=torch.float64)
    expected[1], expected[2] = 0.75, 0.25
    assert torch.allclose(masses, expected)


def test_particle_on_upper_boundary_is_kept():
    grid = Grid(0.0, 1.0, 5)
    masses = grid.deposit(torch.tensor([[1.0], [0.0]]))
    assert masses[-1] == 0.5 and masses[0] == 0.5


def test_interpolation_is_exact_for_linear_fields():
    grid = Grid([-1, 0], [1, 3], [21, 31])
    nodes = grid.nodes(dtype=torch.float64)
    field = 2 * nodes[..., 0] - 0.5 * nodes[..., 1] + 1
    x = torch.rand(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * torch.tensor([2.0, 3.0])
    x[:, 0] -= 1
    assert torch.allclose(grid.interpolate(field, x), 2 * x[:, 0] - 0.5 * x[:, 1] + 1, atol=1e-12)
    vector = torch.stack([field, -field], -1)
    assert grid.interpolate(vector, x).shape == (100, 2)


def test_periodic_grid_wraps_positions():
    grid = Grid(0.0, 1.0, 10, periodic=True)
    x = torch.tensor([[0.05], [1.05], [-0.95]], dtype=torch.float64)
    masses = grid.deposit(x, weights=torch.ones(3, dtype=torch.float64))
    assert torch.allclose(masses[0], torch.tensor(1.5, dtype=torch.float64))
    assert torch.allclose(masses[1], torch.tensor(1.5, dtype=torch.float64))
    # wraparound between the last and first node
    mass = grid.deposit(torch.tensor([[0.95]], dtype=torch.float64))
    assert torch.allclose(mass[9], torch.tensor(0.5, dtype=torch.float64))
    assert torch.allclose(mass[0], torch.tensor(0.5, dtype=torch.float64))


@pytest.mark.parametrize("periodic", [False, True])
def test_fft_convolution_matches_direct_sum(periodic):
    grid = Grid([0, 0], [1, 2], [8, 12], periodic=periodic)
    masses = torch.rand(8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def kernel(offset):
        # even in each coordinate: the minimum image at exactly half a box is ambiguous in sign
        return torch.stack([torch.exp(-(offset ** 2).sum(-1)), offset[..., 0] ** 2 * offset[..., 1] ** 2], -1)

    result = GridConvolution(grid, kernel)(masses)
    nodes = grid.nodes(dtype=torch.float64).reshape(-1, 2)
    difference = nodes[:, None] - nodes[None]
    if periodic:
        box = torch.tensor([1.0, 2.0], dtype=torch.float64)
        difference = difference - box * torch.round(difference / box)
    direct = (kernel(difference) * masses.reshape(1, -1, 1)).sum(1).reshape(8, 12, 2)
    assert torch.allclose(result, direct, atol=1e-10)


def test_covering_grid_contains_points():
    x = torch.randn(1000, 2) * 3
    grid = Grid.covering(x, 32)
    assert grid.shape == (32, 32)
    grid.deposit(x)  # no out-of-box error


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("scheme", ["cic", "ngp"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_sorted_deposit_equals_atomic_deposit(periodic, scheme, dim):
    grid = Grid(0, 1, [9, 7, 5][:dim], periodic=periodic)
    x = torch.rand(3, 2000, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    if periodic:
        x = 3 * x - 1
    weights = torch.rand(3, 2000, dtype=torch.float64)
    atomic = grid.deposit(x, weights, scheme=scheme, method="atomic")
    assert torch.allclose(grid.deposit(x, weights, scheme=scheme, method="sorted"), atomic, atol=1e-14)
