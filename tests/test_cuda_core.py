"""CUDA runs of the particle core (skipped with a reason where no CUDA device is present).

Marked ``cuda``: ``pytest -m cuda`` on a GPU machine runs them; elsewhere conftest skips them.
"""
import pytest
import torch

from torchmf import systems
from torchmf.grid import Grid
from torchmf.interaction import InteractionForce
from torchmf.kernels import GaussianKernel, PeriodicKernel
from torchmf.metrics import smoothed_density, w2

pytestmark = pytest.mark.cuda


def test_grid_force_agrees_between_cpu_and_cuda():
    x = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0))
    kernel = GaussianKernel(0.5, 2)
    grid = Grid(-7, 7, 256, dim=2)
    cpu = InteractionForce(kernel, "grid", grid=grid)(x)
    for method in ("atomic", "sorted"):
        gpu = InteractionForce(kernel, "grid", grid=grid, deposit_method=method)(x.cuda())
        assert gpu.device.type == "cuda" and gpu.dtype == x.dtype
        assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-5


def test_pairwise_force_agrees_between_cpu_and_cuda():
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kernel = PeriodicKernel(GaussianKernel(0.3, 2), 4.0)
    cpu = InteractionForce(kernel, "pairwise")(x)
    gpu = InteractionForce(kernel, "pairwise")(x.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-10)


@pytest.mark.parametrize("name", ["ou_linear", "double_well", "box_diffusion", "qanr_1d", "keller_segel_2d"])
def test_systems_simulate_on_cuda_and_are_reproducible(name):
    system = systems.get(name)
    kwargs = dict(n_particles=256, n_experiments=2, times=[0.0, 5 * system.default_dt], device="cuda", progress=False)
    first = system.simulate(seed=3, **kwargs)
    second = system.simulate(seed=3, **kwargs)
    assert first.positions.device.type == "cuda"
    assert torch.equal(first.positions, second.positions)
    assert torch.isfinite(first.positions).all()


def test_ou_variance_on_cuda_matches_closed_form():
    ou = systems.get("ou_linear")
    data = ou.simulate(n_particles=20_000, n_experiments=2, t_end=1.0, record_dt=0.5, dt=0.005, seed=0, device="cuda",
                       progress=False)
    variance = data.positions.double().var(dim=2).mean(dim=(0, 2)).cpu()
    assert torch.allclose(variance, ou.variance(data.times.double().cpu()), rtol=0.03)


def test_metrics_on_cuda():
    x = torch.randn(2000, 2, device="cuda")
    assert w2(x, x + 1.0, method="sinkhorn").device.type == "cuda"
    density = smoothed_density(x, Grid(-6, 6, 64, dim=2), 0.3)
    assert density.device.type == "cuda"
    assert abs(float(density.sum()) * Grid(-6, 6, 64, dim=2).cell_volume - 1) < 1e-3
