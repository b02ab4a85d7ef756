"""1D-1V Vlasov-Poisson PIC: Poisson solve, conservation, Landau damping rate, two-stream growth.

Bad inputs tried: alpha >= 1 (``alpha``), non-positive k (``k``), too few cells (``cells``),
negative beam velocity (``beam_velocity``), a fit with fewer than two maxima (``amplitude``).
"""
from __future__ import annotations

import math

import pytest
import torch

from torchmf import systems
from torchmf.systems.vlasov import VlasovPoissonPIC, field_mode, landau_rate


def _initial(system, n, seed=0, dtype=torch.float64):
    return system.initial_state(n, 1, torch.Generator().manual_seed(seed), "cpu", dtype)


def test_poisson_solve_matches_closed_form():
    system = systems.get("vlasov_landau", alpha=0.05)
    state = _initial(system, 100_000)
    field = system.pic.field_on_grid(state[..., 0])[0]
    nodes = system.pic.grid.axes(dtype=torch.float64)[0]
    expected = 0.05 * torch.sin(0.5 * nodes) / 0.5  # dE/dx = rho - 1 = alpha cos(kx)
    assert float((field - expected).norm() / expected.norm()) < 2e-2
    assert abs(float(field_mode(system.pic, state)) - 0.1) < 2e-3


def test_momentum_is_conserved():
    system = systems.get("vlasov_two_stream")
    state = _initial(system, 20_000)
    before = state[..., 1].sum()
    for k in range(20):
        state = system.step(0.1 * k, state, 0.1, None)
    assert abs(float(state[..., 1].sum() - before)) / state.shape[1] < 1e-9
    assert bool(((state[..., 0] >= 0) & (state[..., 0] < system.length)).all())


def test_quiet_start_is_seeded_and_has_the_right_moments():
    system = systems.get("vlasov_landau")
    first, again, other = _initial(system, 50_000, 1), _initial(system, 50_000, 1), _initial(system, 50_000, 2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    velocities = first[0, :, 1]
    assert abs(float(velocities.mean())) < 1e-3 and abs(float(velocities.var()) - 1) < 1e-2


def test_landau_rate_recovers_a_synthetic_rate():
    times = torch.linspace(0, 20, 401, dtype=torch.float64)
    amplitude = 0.02 * torch.exp(-0.153 * times) * torch.cos(1.4156 * times).abs()
    assert abs(landau_rate(times, amplitude) + 0.153) < 5e-3


@pytest.mark.slow
def test_landau_damping_rate_of_the_reference_pic():
    system = systems.get("vlasov_landau")
    run = system.simulate(n_particles=50_000, t_end=20.0, seed=0, progress=False)
    rate = landau_rate(run.times, system.field_mode(run.positions[0]), 20.0)
    assert abs(rate / -0.1533 - 1) < 0.10


def test_two_stream_grows_and_single_maxwellian_does_not():
    times = [0.0, 15.0]
    unstable = systems.get("vlasov_two_stream")
    stable = systems.get("vlasov_two_stream", single_maxwellian=True)
    grown = unstable.simulate(n_particles=4_000, times=times, seed=0, progress=False)
    flat = stable.simulate(n_particles=4_000, times=times, seed=0, progress=False)
    assert float(unstable.field_mode(grown.positions[0, -1])) > 10 * float(unstable.field_mode(grown.positions[0, 0]))
    assert float(stable.field_mode(flat.positions[0, -1])) < float(stable.field_mode(flat.positions[0, 0]))


def test_torchsde_drift_is_velocity_and_field():
    pic = VlasovPoissonPIC(4 * math.pi, 32)
    y = torch.rand(100, 2, dtype=torch.float64) * torch.tensor([4 * math.pi, 1.0], dtype=torch.float64)
    drift = pic.f(0.0, y)
    assert torch.equal(drift[:, 0], y[:, 1]) and torch.equal(pic.g(0.0, y), torch.zeros_like(y))


def test_bad_inputs():
    for build, name in [
        (lambda: systems.get("vlasov_landau", alpha=1.5), "alpha"),
        (lambda: systems.get("vlasov_landau", k=0.0), "k"),
        (lambda: systems.get("vlasov_landau", cells=2), "cells"),
        (lambda: systems.get("vlasov_two_stream", beam_velocity=-1.0), "beam_velocity"),
        (lambda: landau_rate(torch.arange(3.0), torch.tensor([1.0, 0.5, 0.2])), "amplitude"),
    ]:
        with pytest.raises((ValueError, TypeError), match=name):
            build()
