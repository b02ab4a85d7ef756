"""Multiscale nudging: velocity against closed forms and the exact pairwise path, stability, torchsde.

Bad inputs tried (each must raise a ValueError/TypeError naming the argument), see
``test_bad_inputs``: observation grids that do not cover the particles (``grid``), observed
particles outside a given grid (``observations``), dimension mismatch between observations and
state (``observations``), non-positive bandwidth (``bandwidth``), negative strength
(``strength``), observation times outside the run (``observations``), NaN in snapshots
(``snapshots``) and in densities (``densities``), wrong density shape (``densities``), unknown
backend (``backend``) and interpolation (``interpolation``), non-increasing times (``times``),
wrong extent (``extent``), non-model base (``base_sde``), non-observation (``observations``).
"""
from __future__ import annotations

import math

import pytest
import torch

from torchmf import systems
from torchmf.grid import Grid
from torchmf.metrics import w2
from torchmf.nudging import GridObservations, NudgedSDE, ParticleObservations, density_observations
from torchmf.sde import McKeanVlasovSDE


def _gaussian_gradient(x, mean, variance):
    """d/dx of the N(mean, variance) density in 1-D."""
    density = torch.exp(-(x - mean) ** 2 / (2 * variance)) / math.sqrt(2 * math.pi * variance)
    return -(x - mean) / variance * density


def _still():
    return McKeanVlasovSDE(1)  # zero drift, zero noise: only the nudging moves particles


def test_velocity_matches_closed_form_for_point_masses():
    # mu = delta_0 (one particle), mu_obs = delta_1: v(x) = -lam [K'_{sqrt2 h}(x) - K'_{sqrt2 h}(x - 1)]
    h, lam = 0.3, 2.0
    observations = ParticleObservations(torch.tensor([[[1.0]]], dtype=torch.float64), times=[0.0])
    model = NudgedSDE(_still(), observations, h, lam, backend="pairwise")
    x = torch.tensor([[[0.0]]], dtype=torch.float64)
    expected = -lam * (0.0 - _gaussian_gradient(torch.tensor(0.0, dtype=torch.float64), 1.0, 2 * h * h))
    assert torch.allclose(model.velocity(0.0, x).squeeze(), expected, rtol=1e-10)
    assert float(model.velocity(0.0, x)) > 0  # pulled towards the observation


def test_grid_velocity_matches_pairwise():
    generator = torch.Generator().manual_seed(0)
    snapshots = torch.randn(2, 1500, 2, generator=generator, dtype=torch.float64) * 0.8 + 0.5
    x = torch.randn(1, 800, 2, generator=generator, dtype=torch.float64)
    observations = ParticleObservations(snapshots, times=[0.0, 1.0], interpolation="linear")
    grid = Grid(-6, 6, 256, dim=2)
    exact = NudgedSDE(McKeanVlasovSDE(2), observations, 0.4, 10.0, backend="pairwise").velocity(0.5, x)
    fast = NudgedSDE(McKeanVlasovSDE(2), observations, 0.4, 10.0, backend="grid", grid=grid).velocity(0.5, x)
    assert float((fast - exact).norm() / exact.norm()) < 2e-2


def test_grid_observations_equal_particle_observations():
    # a density image of the same snapshots gives the same velocity as the snapshots themselves
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(1, 1, 2000, 1, generator=generator, dtype=torch.float64)
    from torchmf.particles import Trajectories

    data = Trajectories(reference, torch.tensor([0.0], dtype=torch.float64))
    grid = Grid(-7, 7, 1024)
    images = density_observations(data, grid, 0.25)
    points = ParticleObservations(data)
    x = torch.linspace(-2, 2, 50, dtype=torch.float64).reshape(1, 50, 1)
    from_images = NudgedSDE(_still(), images, 0.25, 1.0, backend="pairwise").velocity(0.0, x)
    from_points = NudgedSDE(_still(), points, 0.25, 1.0, backend="pairwise").velocity(0.0, x)
    assert float((from_images - from_points).norm() / from_points.norm()) < 1e-2


def test_periodic_velocity_is_periodic():
    observations = ParticleObservations(torch.tensor([[[0.2]]], dtype=torch.float64), times=[0.0])
    grid = Grid(0.0, 2.0, 128, periodic=True)
    model = NudgedSDE(_still(), observations, 0.2, 1.0, backend="pairwise", grid=grid)
    x = torch.tensor([[[1.9]], [[1.9 - 2.0]]], dtype=torch.float64).reshape(2, 1, 1)
    velocity = model.velocity(0.0, x)
    assert torch.allclose(velocity[0], velocity[1])
    assert float(velocity[0]) > 0  # 1.9 -> 0.2 is shorter across the boundary


def test_time_rules():
    snapshots = torch.zeros(3, 5, 1)
    hold = ParticleObservations(snapshots, times=[0.0, 1.0, 2.0])
    linear = ParticleObservations(snapshots, times=[0.0, 1.0, 2.0], interpolation="linear")
    assert hold.rule(-0.5) == [] and linear.rule(-0.5) == []
    assert hold.rule(1.5) == [(1, 1.0)]
    assert [(i, round(w, 6)) for i, w in linear.rule(1.25)] == [(1, 0.75), (2, 0.25)]
    assert linear.rule(5.0) == [(2, 1.0)] and hold.rule(2.0) == [(2, 1.0)]


def test_nudging_pulls_distribution_to_observation():
    # a static observed N(1, 0.3^2) cloud; the forecast starts at N(0.2, 0.3^2) and does not move by itself
    generator = torch.Generator().manual_seed(2)
    target = 1 + 0.3 * torch.randn(1, 1, 1000, 1, generator=generator, dtype=torch.float64)
    start = 0.2 + 0.3 * torch.randn(1, 1000, 1, generator=generator, dtype=torch.float64)
    observations = ParticleObservations(target.expand(1, 2, 1000, 1), times=[0.0, 2.0])
    model = NudgedSDE(_still(), observations, 0.5, 50.0, grid=Grid(-6, 6, 512))
    run = model.simulate(start, torch.linspace(0, 2, 5, dtype=torch.float64), 0.05, seed=0, progress=False)
    errors = w2(run.positions[0], target[0, 0].expand(5, 1000, 1))
    assert float(errors[0]) > 0.7 and float(errors[-1]) < 0.3 * float(errors[0])
    assert bool((errors[1:] <= errors[:-1] + 1e-9).all())


def test_large_strength_stays_finite_with_automatic_substeps():
    reference = systems.get("ou_linear", a=1.0)
    times = torch.linspace(0, 0.1, 3, dtype=torch.float64)
    data = reference.simulate(n_particles=400, times=times, seed=0, progress=False)
    biased = systems.get("ou_linear", a=5.0)
    observations = ParticleObservations(data, interpolation="linear")
    model = NudgedSDE(biased.sde, observations, 0.4, 1e4, scheme="explicit")
    with pytest.warns(RuntimeWarning, match="explicit sub-steps"):  # the cost is announced
        run = model.simulate(data.positions[:, 0], times, 0.01, seed=1, progress=False)
    assert bool(torch.isfinite(run.positions).all())
    assert model.last_substeps > 10  # the stability bound asked for sub-steps
    assert float(w2(run.positions[0, -1], data.positions[0, -1])) < 0.1
    # without sub-steps the same strength is unstable: explicit Euler overshoots out of the grid
    unstable = NudgedSDE(biased.sde, observations, 0.4, 1e4, substeps=1, scheme="explicit")
    with pytest.raises(ValueError):
        unstable.simulate(data.positions[:, 0], times, 0.01, seed=1, progress=False)


def test_observed_dims_only_move_those_coordinates():
    observations = ParticleObservations(torch.tensor([[[1.0]]]), times=[0.0])
    model = NudgedSDE(McKeanVlasovSDE(2), observations, 0.3, 5.0, backend="pairwise", observed_dims=[0])
    x = torch.tensor([[[0.0, 3.0]]])
    after = model.step(0.0, x, 0.1, None)
    assert float(after[0, 0, 0]) > 0 and float(after[0, 0, 1]) == 3.0


def test_torchsde_sdeint_runs_and_matches_drift():
    import torchsde

    generator = torch.Generator().manual_seed(3)
    snapshots = torch.randn(2, 200, 1, generator=generator)
    observations = ParticleObservations(snapshots, times=[0.0, 1.0])
    base = McKeanVlasovSDE(1, external_force=lambda x: -x, diffusion=0.5, n_experiments=2)
    model = NudgedSDE(base, observations, 0.3, 5.0, backend="pairwise", n_experiments=2)
    y = torch.randn(2 * 100, 1, generator=generator)
    drift = model.f(0.5, y)
    expected = base.f(0.5, y) + model.velocity(0.5, y.reshape(2, 100, 1)).reshape_as(y)
    assert torch.allclose(drift, expected)
    path = torchsde.sdeint(model, y, torch.tensor([0.0, 0.1]), dt=0.05, method="euler")
    assert path.shape == (2, 200, 1) and bool(torch.isfinite(path).all())


def test_observation_noise_is_seeded():
    snapshots = torch.zeros(1, 10, 1)
    first = ParticleObservations(snapshots, times=[0.0], noise=0.1, seed=4).snapshots
    again = ParticleObservations(snapshots, times=[0.0], noise=0.1, seed=4).snapshots
    other = ParticleObservations(snapshots, times=[0.0], noise=0.1, seed=5).snapshots
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert 0.02 < float(first.std()) < 0.3


def test_bad_inputs():
    snapshots = torch.zeros(2, 10, 1)
    observations = ParticleObservations(snapshots, times=[0.0, 1.0])
    base = McKeanVlasovSDE(1)
    cases = [
        (lambda: NudgedSDE(base, observations, 0.0, 1.0), "bandwidth"),
        (lambda: NudgedSDE(base, observations, -1.0, 1.0), "bandwidth"),
        (lambda: NudgedSDE(base, observations, 0.1, -1.0), "strength"),
        (lambda: NudgedSDE(base, observations, 0.1, 1.0, backend="fft"), "backend"),
        (lambda: NudgedSDE(McKeanVlasovSDE(2), observations, 0.1, 1.0), "observations"),
        (lambda: NudgedSDE(base, observations, 0.1, 1.0, grid=Grid(-1, 1, 8, dim=2)), "grid"),
        (lambda: NudgedSDE(object(), observations, 0.1, 1.0), "base_sde"),
        (lambda: NudgedSDE(base, snapshots, 0.1, 1.0), "observations"),
        (lambda: ParticleObservations(torch.full((2, 10, 1), float("nan")), times=[0.0, 1.0]), "snapshots"),
        (lambda: ParticleObservations(snapshots, times=[1.0, 0.0]), "times"),
        (lambda: ParticleObservations(snapshots, times=[0.0]), "times"),
        (lambda: ParticleObservations(snapshots, times=[0.0, 1.0], interpolation="cubic"), "interpolation"),
        (lambda: GridObservations(torch.full((1, 8), float("nan")), (-1.0, 1.0), [0.0]), "densities"),
        (lambda: GridObservations(torch.zeros(1, 8), Grid(-1, 1, 16), [0.0]), "densities"),
        (lambda: GridObservations(torch.zeros(1, 8), "box", [0.0]), "extent"),
    ]
    for build, name in cases:
        with pytest.raises((ValueError, TypeError)) as error:
            build()
        assert name in str(error.value), (name, str(error.value))
    # observation times outside the run
    model = NudgedSDE(base, observations, 0.1, 1.0, backend="pairwise")
    with pytest.raises(ValueError, match="observations"):
        model.simulate(torch.zeros(1, 10, 1), [0.0, 0.5], 0.1, progress=False)
    # an observation grid that does not cover the forecast particles
    images = GridObservations(torch.ones(2, 16) / 2, (-1.0, 1.0), [0.0, 1.0])
    model = NudgedSDE(base, images, 0.1, 1.0)
    with pytest.raises(ValueError, match="grid"):
        model.simulate(torch.full((1, 10, 1), 3.0), [0.0, 1.0], 0.1, progress=False)
    # observed particles outside a given computation grid
    far = ParticleObservations(torch.full((2, 10, 1), 5.0), times=[0.0, 1.0])
    model = NudgedSDE(base, far, 0.1, 1.0, grid=Grid(-1, 1, 32))
    with pytest.raises(ValueError, match="observations"):
        model.velocity(0.5, torch.zeros(1, 10, 1))
    # state dimension mismatch at run time
    with pytest.raises(ValueError, match="x0"):
        NudgedSDE(base, observations, 0.1, 1.0).simulate(torch.zeros(1, 10, 2), [0.0, 1.0], 0.1, progress=False)
