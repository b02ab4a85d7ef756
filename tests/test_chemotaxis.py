"""torchmf.systems.chemotaxis: motor rule, exact adaptation update, drift up the gradient,
Table 7.4 re-initialization, and bad parameters."""
import math

import pytest
import torch

from torchmf import systems
from torchmf.systems.chemotaxis import ChemotaxisState


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_paper_defaults():
    model = systems.get("chemotaxis")
    assert "chemotaxis" in systems.names()
    assert (model.default_particles, model.default_dt, model.speed) == (10_000, 1 / 16, 0.003)
    assert float(model.attractant(torch.tensor(6.5))) == pytest.approx(1 / (1.35 * math.sqrt(2 * math.pi)))


def test_runs_only_with_four_ccw_motors_at_speed_v():
    model = systems.get("chemotaxis")
    generator = torch.Generator().manual_seed(0)
    state = model.initial_state(2000, 1, generator, "cpu", torch.float64)
    new = model.step(0.0, state, model.default_dt, generator)
    moved = (new.x - state.x).abs().squeeze(-1)
    running = new.motors.sum(-1) >= 4
    assert torch.all(moved[~running] == 0)
    assert torch.allclose(moved[running], torch.full_like(moved[running], 0.003 / 16))
    assert 0 < float(running.double().mean()) < 1


def test_adaptation_update_is_the_exact_exponential():
    model = systems.get("chemotaxis", speed=1e-12)  # frozen positions: f is constant
    generator = torch.Generator().manual_seed(1)
    state = model.initial_state(50, 1, generator, "cpu", torch.float64)
    state = ChemotaxisState(state.x, state.u1, torch.zeros_like(state.u2), state.motors, state.direction)
    f = model.signal(state.x)
    for _ in range(16):
        state = model.step(0.0, state, 1 / 16, generator)
    assert torch.allclose(state.u2, f * (1 - math.exp(-1.0 / model.t_a)), rtol=1e-9)


def test_population_drifts_up_the_gradient():
    model = systems.get("chemotaxis")
    data = model.simulate(n_particles=400, t_end=300.0, record_dt=300.0, seed=0, progress=False)
    mean = data.positions[0, :, :, 0].mean(-1)
    assert float(mean[1] - mean[0]) > 0.05          # start 5.0, attractant peak at 6.5
    assert set(data.extras) == {"u1", "u2", "motors", "direction"}
    assert data.extras["motors"].shape == (1, 2, 400, 6)
    flat = systems.get("chemotaxis", sd=1e6, mean=5.0)  # no gradient: no drift
    still = flat.simulate(n_particles=400, t_end=300.0, record_dt=300.0, seed=0, progress=False)
    shift = still.positions[0, :, :, 0].mean(-1)
    assert abs(float(shift[1] - shift[0])) < 0.02


def test_table_7_4_reinitializations():
    model = systems.get("chemotaxis")
    generator = torch.Generator().manual_seed(2)
    state = model.initial_state(100, 1, generator, "cpu", torch.float64)
    for _ in range(20):
        state = model.step(0.0, state, 1 / 16, generator)
    target = state.x + 0.05
    dependent = model.reinitialize(state, target, 95.0, "history-dependent", generator)
    assert torch.all(dependent.u1 == 0)
    assert torch.allclose(dependent.u2, state.u2 + 95.0 * (model.signal(state.x) - state.u2) / model.t_a)
    assert torch.equal(dependent.motors, state.motors) and torch.equal(dependent.direction, state.direction)
    assert torch.allclose(dependent.x, target)
    independent = model.reinitialize(state, target, 95.0, "history-independent", generator)
    assert torch.all(independent.u1 == 0) and torch.all(independent.motors == 0)
    assert torch.allclose(independent.u2, model.signal(target))


def test_walls_reflect_positions_and_directions():
    model = systems.get("chemotaxis")
    state = model.initial_state(4, 1, torch.Generator().manual_seed(3), "cpu", torch.float64)
    moved = model.with_positions(state, torch.tensor([[[10.5], [-0.25], [3.0], [9.0]]], dtype=torch.float64))
    assert torch.allclose(moved.x.squeeze(), torch.tensor([9.5, 0.25, 3.0, 9.0], dtype=torch.float64))
    assert torch.equal(moved.direction[0, :2], -state.direction[0, :2])
    assert torch.equal(moved.direction[0, 2:], state.direction[0, 2:])


BAD_INPUTS = [
    ("ccw_bias >= 1", lambda: systems.get("chemotaxis", ccw_bias=1.0), ValueError, "ccw_bias"),
    ("upper <= lower", lambda: systems.get("chemotaxis", lower=5.0, upper=5.0), ValueError, "upper"),
    ("negative speed", lambda: systems.get("chemotaxis", speed=-1.0), ValueError, "speed"),
    ("start outside", lambda: systems.get("chemotaxis", start=20.0), ValueError, "start"),
    ("unknown parameter", lambda: systems.get("chemotaxis", colour=1), TypeError, "params"),
    ("unknown scheme", lambda: systems.get("chemotaxis").reinitialize(
        systems.get("chemotaxis").initial_state(3, 1, None, "cpu", torch.float32), torch.rand(1, 3, 1), 1.0,
        "random"), ValueError, "scheme"),
]


@pytest.mark.parametrize("label, call, error, name", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(label, call, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        call()
