import math

import pytest
import torch

from torchmf import Trajectories, systems
from torchmf.systems.lorenz import lorenz_vector_field

REQUIRED = ["ou_linear", "double_well", "lorenz_mf", "box_diffusion", "qanr_1d", "keller_segel_2d", "local_2d"]


def test_required_systems_are_registered():
    assert set(REQUIRED) <= set(systems.names())


@pytest.mark.parametrize("name", REQUIRED)
def test_each_system_simulates_short_runs_reproducibly(name):
    system = systems.get(name)
    dt = system.default_dt
    kwargs = dict(n_particles=40, n_experiments=2, times=[0.0, 3 * dt, 6 * dt], dt=dt, progress=False)
    first = system.simulate(seed=1, **kwargs)
    second = system.simulate(seed=1, **kwargs)
    assert isinstance(first, Trajectories)
    assert first.positions.shape == (2, 3, 40, system.dim)
    assert torch.isfinite(first.positions).all()
    assert torch.equal(first.positions, second.positions)
    assert first.meta["system"] == name and first.meta["seed"] == 1


def test_double_well_without_coupling_reaches_gibbs_law():
    sigma = 0.8
    system = systems.get("double_well", a=0.0, sigma=sigma, initial_mean=0.0, initial_std=0.1)
    data = system.simulate(n_particles=4000, times=[0.0, 25.0], dt=0.01, seed=2, progress=False)
    final = data.positions[0, -1, :, 0].double()
    x = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    weight = torch.exp(-2 * (x**4 / 4 - x**2 / 2) / sigma**2)
    second_moment = float((x**2 * weight).sum() / weight.sum())
    assert abs(float((final**2).mean()) - second_moment) < 0.05 * second_moment
    assert 0.35 < float((final > 0).double().mean()) < 0.65  # both wells populated


def test_lorenz_vector_field():
    value = lorenz_vector_field(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(value, torch.tensor([0.0, 26.0, 1.0 - 8.0 / 3.0], dtype=torch.float64))


def test_local_2d_homogenized_diffusivity_against_quadrature():
    from scipy import integrate

    inverse, _ = integrate.dblquad(lambda y, x: 1 / (1 + 0.95 * math.cos(x) * math.cos(y)), 0, 2 * math.pi, 0,
                                   2 * math.pi, epsabs=1e-10)
    expected = 4 * math.pi**2 / inverse
    assert abs(systems.get("local_2d").homogenized_diffusivity() - expected) < 1e-4


def test_keller_segel_initial_law_is_uniform_on_disk():
    system = systems.get("keller_segel_2d")
    x = system.initial_state(20000, 1, torch.Generator().manual_seed(0), "cpu", torch.float64)[0]
    radius = x.norm(dim=-1)
    assert float(radius.max()) <= 2.0
    assert abs(float((radius < 1).double().mean()) - 0.25) < 0.015  # area fraction of the inner disk
