import math

import pytest
import torch
import torchsde

from torchmf import systems
from torchmf.kernels import PowerPotential
from torchmf.sde import McKeanVlasovSDE, PeriodicBox, ReflectingBox, simulate


def test_ou_variance_matches_closed_form():
    ou = systems.get("ou_linear", a=1.0, theta=1.0, sigma=1.0, initial_mean=2.0, initial_std=0.5)
    data = ou.simulate(n_particles=4000, n_experiments=4, t_end=2.0, record_dt=0.25, dt=0.005, seed=3, progress=False)
    variance = data.positions.double().var(dim=2).mean(dim=(0, 2))
    mean = data.positions.double().mean(dim=(0, 2, 3))
    assert torch.allclose(variance, ou.variance(data.times.double()), rtol=0.05)
    assert torch.allclose(mean, ou.mean(data.times.double()), atol=0.03)


def test_module_works_with_torchsde_sdeint():
    a, theta, sigma, n, m = 1.0, 0.5, 0.8, 2000, 2
    sde = McKeanVlasovSDE(1, external_force=lambda x: -theta * x, interaction=PowerPotential(2, a / 2),
                          diffusion=sigma, n_experiments=m)
    y0 = torch.randn(m * n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.0
    ts = torch.tensor([0.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        ys = torchsde.sdeint(sde, y0, ts, method="euler", dt=0.01)
    final = ys[-1].reshape(m, n)
    rate = 2 * (theta + a)
    expected = sigma**2 / rate + (1 - sigma**2 / rate) * math.exp(-rate * 3.0)
    assert abs(float(final.var(-1).mean()) / expected - 1) < 0.06
    assert abs(float(final.mean()) - math.exp(-theta * 3.0)) < 0.05


def test_scalar_noise_and_interaction_inside_f():
    sde = McKeanVlasovSDE(2, interaction=PowerPotential(2, 0.5), diffusion=[0.1, 0.2], n_experiments=2,
                          noise_type="scalar")
    y = torch.randn(10, 2)
    assert sde.g(0.0, y).shape == (10, 2, 1)
    drift = sde.f(0.0, y)
    grouped = y.reshape(2, 5, 2)
    assert torch.allclose(drift, -(grouped - grouped.mean(1, keepdim=True)).reshape(10, 2), atol=1e-6)


def test_reflecting_box_folds_repeatedly():
    box = ReflectingBox(0.0, 10.0)
    x = torch.tensor([-0.3, 10.3, 20.3, -10.3, 5.0, 30.0], dtype=torch.float64)
    assert torch.allclose(box.apply(x), torch.tensor([0.3, 9.7, 0.3, 9.7, 5.0, 10.0], dtype=torch.float64))


def test_periodic_box_wraps():
    box = PeriodicBox([0.0, -1.0], [1.0, 1.0])
    x = torch.tensor([[1.25, 1.5], [-0.25, -3.5]], dtype=torch.float64)
    assert torch.allclose(box.apply(x), torch.tensor([[0.25, -0.5], [0.75, 0.5]], dtype=torch.float64))


def test_reflected_brownian_motion_tends_to_uniform_law():
    box = systems.get("box_diffusion", speed=1.0)
    data = box.simulate(n_particles=4000, times=[0.0, 200.0], dt=0.25, seed=1, progress=False)
    final = data.positions[0, -1].double()
    assert final.min() >= 0 and final.max() <= 10
    assert torch.allclose(final.mean(0), torch.full((2,), 5.0, dtype=torch.float64), atol=0.2)
    assert torch.allclose(final.var(0), torch.full((2,), 100 / 12, dtype=torch.float64), rtol=0.06)
    for axis in range(2):  # Kolmogorov-Smirnov distance to the uniform CDF
        values = final[:, axis].sort().values / 10
        empirical = torch.arange(1, values.numel() + 1, dtype=torch.float64) / values.numel()
        assert float((empirical - values).abs().max()) < 0.035


def test_simulate_records_requested_times_and_is_reproducible():
    sde = McKeanVlasovSDE(1, external_force=lambda x: -x, diffusion=1.0)
    x0 = torch.zeros(3, 50, 1)
    first = simulate(sde, x0, [0.0, 0.1, 0.35], dt=0.1, seed=7, progress=False)
    second = simulate(sde, x0, [0.0, 0.1, 0.35], dt=0.1, seed=7, progress=False)
    third = simulate(sde, x0, [0.0, 0.1, 0.35], dt=0.1, seed=8, progress=False)
    assert first.positions.shape == (3, 3, 50, 1)
    assert torch.equal(first.positions, second.positions)
    assert not torch.equal(first.positions, third.positions)
    assert torch.equal(first.positions[:, 0], x0)


def test_divergence_is_reported_not_propagated():
    sde = McKeanVlasovSDE(1, external_force=lambda x: x**3, diffusion=0.0)
    with pytest.raises(ValueError, match="dt"):
        simulate(sde, torch.full((1, 10, 1), 10.0), [0.0, 5.0], dt=0.5, progress=False)
