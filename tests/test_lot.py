"""torchmf.lot: LOT velocity on flows with known velocity, the projective integrator's bookkeeping,
hidden-state re-initialization, the adaptive step, and bad inputs."""
import math

import pytest
import torch

from torchmf import systems
from torchmf.lot import (AdaptiveStep, ProjectiveIntegrator, SystemSimulator, check_simulator, lot_embedding,
                         lot_velocity, particle_velocity, pca, w2_distance)


pytestmark = pytest.mark.usefixtures("one_thread")


def dilation_window(n, k, h, rate, dim, seed=0):
    """Snapshots of the deterministic flow x(t) = x0 exp(rate t) around t = 0: velocity rate * x."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    order = torch.randperm(n, generator=generator)
    # relabel every snapshot: transport must not need particle identities
    return torch.stack([(centre * math.exp(rate * j * h))[order if j % 2 else slice(None)]
                        for j in range(-k, k + 1)]), centre


@pytest.mark.parametrize("dim, method", [(1, "sort"), (2, "exact")])
def test_lot_velocity_of_a_dilation(dim, method):
    k, h, rate = 3, 0.1, 0.4
    window, centre = dilation_window(300 if dim == 1 else 120, k, h, rate, dim)
    velocity = lot_velocity(window, h, k, method=method, estimator="centred-average")
    # centred differences of exp: sinh(r j h) / (j h) -> r up to O((r k h)^2)
    expected = centre * sum(math.sinh(rate * j * h) / (j * h) for j in range(1, k + 1)) / k
    assert torch.allclose(velocity, expected, atol=1e-10)
    # the regression: least-squares slope of the odd parts x sinh(r s_j) over s_j; a linear field is
    # left unchanged by the local-linear smoothing at any bandwidth
    lags = [j * h for j in range(1, k + 1)]
    slope = sum(s * math.sinh(rate * s) for s in lags) / sum(s * s for s in lags)
    assert torch.allclose(lot_velocity(window, h, k, method=method), centre * slope, atol=1e-9)


def test_lot_velocity_of_gaussian_diffusion_beats_particle_wise():
    # 1-D Brownian motion from N(0, t - kh): the bulk velocity is x / (2t) (LOT paper, section 5.1)
    generator = torch.Generator().manual_seed(1)
    n, k, h, t0 = 6000, 40, 0.05, 4.0
    x = torch.randn(n, 1, generator=generator, dtype=torch.float64) * math.sqrt(t0 - k * h)
    window = [x]
    for _ in range(2 * k):
        x = x + math.sqrt(h) * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        window.append(x)
    window = torch.stack(window)
    truth = window[k] / (2 * t0)
    lot_error = float((lot_velocity(window, h, k) - truth).norm() / truth.norm())
    particle_error = float((particle_velocity(window, h, k) - truth).norm() / truth.norm())
    assert lot_error < 0.35
    assert particle_error > 3 * lot_error


def test_particle_velocity_of_tracked_linear_motion():
    generator = torch.Generator().manual_seed(2)
    start, speed = torch.rand(50, 2, generator=generator), torch.rand(50, 2, generator=generator)
    window = torch.stack([start + speed * j * 0.1 for j in range(-2, 3)])
    assert torch.allclose(particle_velocity(window, 0.1), speed, atol=1e-5)


def test_lot_embedding_and_pca():
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(80, 2, generator=generator, dtype=torch.float64)
    shifts = torch.linspace(0, 1, 6, dtype=torch.float64)
    measures = torch.stack([reference[torch.randperm(80, generator=generator)] + s for s in shifts])
    embedding = lot_embedding(measures, reference, method="exact")
    assert embedding.shape == (6, 160)
    assert torch.allclose(embedding[0], torch.zeros(160, dtype=torch.float64))
    scores, axes, mean, explained = pca(embedding, 2)
    assert float(explained[0]) > 0.999  # translations: one direction
    projected = pca(embedding, basis=(axes, mean))
    assert torch.allclose(projected, scores)
    gaps = scores[1:, 0] - scores[:-1, 0]
    assert torch.allclose(gaps.abs(), gaps.abs()[0].expand_as(gaps), atol=1e-8)


class DriftSimulator:
    """Deterministic micro-simulator x' = c with a hidden step counter per particle."""

    def __init__(self, n=20, dt=0.5, speed=1.0):
        self.dt, self.speed = dt, speed
        self.state = {"x": torch.linspace(0, 1, n, dtype=torch.float64).unsqueeze(1), "age": torch.zeros(n)}
        self.reinit_calls = []

    def step(self, n):
        for _ in range(n):
            self.state = {"x": self.state["x"] + self.speed * self.dt, "age": self.state["age"] + 1}

    def positions(self):
        return self.state["x"]

    def set_positions(self, positions):
        self.state = dict(self.state, x=positions.clone())


def test_projective_integrator_bookkeeping_on_exact_drift():
    simulator = DriftSimulator()
    integrator = ProjectiveIntegrator(k=2, step=5.0, burn_in=1.0, start_up=1.0, n_steps=3, recovery=2.0,
                                      method="sort", progress=False)
    run = integrator.run(simulator)
    # S/h + N_T (2k + H_R/h) + R/h micro steps; S/h + N_T (k + (H + H_R)/h) + R/h for the plain run
    assert run.micro_steps == 2 + 3 * (4 + 2) + 4
    assert run.control_steps == 2 + 3 * (2 + 10 + 2) + 4
    assert run.cycle_ratio == pytest.approx(18 / 42)
    assert float(run.times[-1]) == pytest.approx(run.control_steps * 0.5)
    # Euler is exact for a constant velocity: the run equals the plain simulation at every record
    control = integrator.control(DriftSimulator(), run.times)
    assert torch.allclose(run.positions, control, atol=1e-9)
    assert torch.all(run.w2_to(control) < 1e-9)
    assert run.stages.count("euler") == 3 and run.stages[-1] == "recovery"
    # hidden state carried through the large steps by the default policy: the centre state's age,
    # so each cycle's last k window steps (after the centre) are not in it
    assert float(simulator.state["age"][0]) == run.micro_steps - 3 * 2


def test_reinit_policy_receives_the_centre_state():
    calls = []

    def policy(simulator, centre_state, positions, step):
        calls.append((float(centre_state["age"][0]), step))
        simulator.state = {"x": positions, "age": torch.full_like(centre_state["age"], -1.0)}

    simulator = DriftSimulator()
    ProjectiveIntegrator(k=2, step=5.0, burn_in=1.0, start_up=1.0, n_steps=2, recovery=0.0, method="sort",
                         reinit=policy, progress=False).run(simulator)
    assert calls == [(2 + 2, 5.0), (-1 + 2 + 2, 5.0)]


def test_adaptive_step_grows_when_the_speed_settles():
    rule = AdaptiveStep(tolerance=0.01, min_step=1.0, max_step=50.0, growth=2.0)
    assert rule.next_step(4.0, 0.0) == 8.0                          # growth cap
    assert rule.next_step(100.0, 0.02) == pytest.approx(1.0)        # sqrt(2 tol / M) = 1
    simulator = DriftSimulator(dt=0.5)
    integrator = ProjectiveIntegrator(k=2, step=3.0, burn_in=1.0, start_up=1.0, n_steps=50, recovery=1.0,
                                      method="sort", adaptive=rule, t_end=200.0, progress=False)
    run = integrator.run(simulator)
    steps = [s["H"] for s in run.large_steps]
    assert steps[0] == 3.0 and max(steps) > 3.0                    # constant speed: no curvature, steps grow
    assert float(run.times[-1]) == pytest.approx(200.0)
    assert run.micro_step_ratio < 0.25


def test_system_simulator_on_the_box():
    box = systems.get("box_diffusion")
    simulator = SystemSimulator(box, 100, seed=0)
    assert simulator.dt == box.default_dt
    simulator.step(3)
    assert simulator.steps == 3 and simulator.positions().shape == (100, 2)
    outside = torch.full((100, 2), 11.0)
    simulator.set_positions(outside)
    assert torch.allclose(simulator.positions(), torch.full((100, 2), 9.0))  # reflected into [0, 10]
    check_simulator(simulator)


def test_w2_distance_matches_pot_above_the_old_sinkhorn_cutoff():
    """N = 1,500 (the old code took a 1%-blur Sinkhorn map above N = 1,000: up to 33% off at
    N = 2,000): equal to POT's network simplex computed here; standing still (W2 = 0) fails."""
    ot = pytest.importorskip("ot")
    import numpy as np

    generator = torch.Generator().manual_seed(4)
    x = torch.rand(1500, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(1500, 2, generator=generator, dtype=torch.float64) * 0.3 + 0.2
    cost = ot.dist(x.numpy(), y.numpy())
    reference = float(np.sqrt(ot.emd2(np.empty(0), np.empty(0), cost, numItermax=10**7)))
    assert float(w2_distance(x, y)) == pytest.approx(reference, rel=1e-9)
    assert reference > 0.1


# -- bad inputs -------------------------------------------------------------------------------------------
def window(count=5, n=10, dim=1):
    return torch.rand(count, n, dim)


BAD_INPUTS = [
    ("even number of snapshots", lambda: lot_velocity(window(4), 0.1), ValueError, "snapshots"),
    ("k does not match", lambda: lot_velocity(window(5), 0.1, k=3), ValueError, "k"),
    ("k zero", lambda: lot_velocity(window(5), 0.1, k=0), ValueError, "k"),
    ("NaN snapshot", lambda: lot_velocity(window(5).index_fill_(0, torch.tensor([1]), math.nan), 0.1), ValueError,
     "snapshots"),
    ("negative dt", lambda: lot_velocity(window(5), -0.1), ValueError, "dt"),
    ("snapshots 2-D", lambda: lot_velocity(torch.rand(5, 10), 0.1), ValueError, "snapshots"),
    ("unknown method", lambda: lot_velocity(window(5), 0.1, method="nearest"), ValueError, "method"),
    ("k out of range", lambda: ProjectiveIntegrator(k=0), ValueError, "k"),
    ("H negative", lambda: ProjectiveIntegrator(step=-1.0), ValueError, "H"),
    ("H not longer than k h", lambda: ProjectiveIntegrator(k=80, step=5.0).plan(1 / 16), ValueError, "H"),
    ("H not a whole number of steps", lambda: ProjectiveIntegrator(step=85.01).plan(1 / 16), ValueError, "H"),
    ("adaptive without t_end", lambda: ProjectiveIntegrator(adaptive=AdaptiveStep(1.0, 1.0, 2.0)), ValueError,
     "t_end"),
    ("adaptive wrong type", lambda: ProjectiveIntegrator(adaptive=3.0), TypeError, "adaptive"),
    ("reinit wrong type", lambda: ProjectiveIntegrator(reinit=3), TypeError, "reinit"),
    ("max_step < min_step", lambda: AdaptiveStep(1.0, 5.0, 2.0), ValueError, "max_step"),
    ("simulator without protocol", lambda: ProjectiveIntegrator(k=1, step=1.0).run(object()), TypeError,
     "simulator"),
    ("simulator with bad dt", lambda: check_simulator(type("S", (), {"dt": 0.0, "state": None, "step": print,
                                                                    "positions": print,
                                                                    "set_positions": print})()),
     ValueError, "simulator.dt"),
    ("system without protocol", lambda: SystemSimulator(object(), 10), TypeError, "system"),
    ("set_positions wrong shape", lambda: SystemSimulator(systems.get("box_diffusion"), 10).set_positions(
        torch.rand(9, 2)), ValueError, "positions"),
    ("embedding reference size", lambda: lot_embedding(torch.rand(3, 10, 2), torch.rand(9, 2)), ValueError,
     "reference"),
    ("pca too many components", lambda: pca(torch.rand(3, 5), 4), ValueError, "components"),
    ("history scheme without support", lambda: ProjectiveIntegrator(k=1, step=1.0, burn_in=0.5, start_up=0.5,
                                                                     n_steps=1, recovery=0.5, method="sort",
                                                                     reinit="history-dependent",
                                                                     progress=False).run(DriftSimulator()),
     TypeError, "reinit"),
]


@pytest.mark.parametrize("label, call, error, name", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(label, call, error, name):
    with pytest.raises(error, match=rf"^{name}:"):
        call()


@pytest.mark.slow
def test_table_6_1_protocol_at_n_1000_beats_the_particle_wise_baseline():
    """Table 6.1 with N = 1,000 and N_T = 4 (about two minutes): the acceptance ratios of the issue."""
    box = systems.get("box_diffusion")
    settings = dict(k=80, step=85.0, burn_in=30.0, start_up=30.0, n_steps=4, recovery=50.0, progress=False)
    lot = ProjectiveIntegrator(**settings)
    run = lot.run(SystemSimulator(box, 1000, seed=1))
    baseline = ProjectiveIntegrator(method="particle", **settings).run(SystemSimulator(box, 1000, seed=1))
    control = lot.control(SystemSimulator(box, 1000, seed=2), run.times)
    second = lot.control(SystemSimulator(box, 1000, seed=3), run.times)
    euler = run.stages.index("euler")
    assert run.cycle_ratio == pytest.approx(1 / 3)
    lot_error = float(w2_distance(run.positions[euler], control[euler]))
    assert float(w2_distance(baseline.positions[euler], control[euler])) >= 3 * lot_error
    assert float(w2_distance(run.positions[-1], control[-1])) <= 2 * float(w2_distance(second[-1], control[-1]))
