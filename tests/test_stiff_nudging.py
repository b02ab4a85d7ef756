"""Stiff nudging (issue 13): the implicit scheme keeps large lambda cheap, finite and accurate."""
import pytest
import torch

from torchmf import systems
from torchmf.metrics import w2
from torchmf.grid import Grid
from torchmf.nudging import NudgedSDE, ParticleObservations
from torchmf.sde import McKeanVlasovSDE


@pytest.fixture(scope="module")
def linear_case():
    times = torch.linspace(0, 0.5, 11, dtype=torch.float64)
    reference = systems.get("ou_linear", a=1.0).simulate(n_particles=500, times=times, seed=0, progress=False)
    return reference, ParticleObservations(reference, interpolation="linear"), systems.get("ou_linear", a=5.0)


def _final_w2(model, reference):
    run = model.simulate(reference.positions[:, 0], reference.times, 0.01, seed=1, progress=False)
    assert bool(torch.isfinite(run.positions).all())
    return float(w2(run.positions[0, -1], reference.positions[0, -1]))


@pytest.mark.parametrize("strength", [1e4, 1e6])
def test_large_strength_costs_a_few_substeps_and_beats_lambda_100(linear_case, strength):
    reference, observations, biased = linear_case
    unnudged = _final_w2(NudgedSDE(biased.sde, observations, 0.2, 0.0), reference)
    moderate = _final_w2(NudgedSDE(biased.sde, observations, 0.2, 100.0), reference)
    model = NudgedSDE(biased.sde, observations, 0.2, strength)
    stiff = _final_w2(model, reference)
    steps = 60  # 10 recording intervals of 0.05 at dt <= 0.01 (float32 times: 5 or 6 steps each)
    assert model.last_scheme == "implicit"
    assert model.total_substeps <= model.implicit_substeps * steps  # bounded cost, whatever lambda
    assert stiff <= moderate, (stiff, moderate)
    assert unnudged > 2 * moderate  # the trivial baseline (no nudging) misses the target


def test_implicit_step_without_damping_is_the_explicit_velocity(linear_case):
    reference, observations, biased = linear_case
    model = NudgedSDE(biased.sde, observations, 0.2, 50.0)
    x = reference.positions[:, 3] + 0.1
    rule = observations.rule(float(reference.times[3]))
    implicit = model._implicit.velocity(rule, x, damping=0.0, strength=model.strength)
    explicit = model.velocity(float(reference.times[3]), x)
    assert float((implicit - explicit).abs().max()) < 1e-4 * float(explicit.abs().max())


def test_one_implicit_substep_corrects_a_shift_without_overshoot_where_explicit_euler_overshoots():
    generator = torch.Generator().manual_seed(0)
    target = 0.5 * torch.randn(1, 2, 2000, 1, generator=generator, dtype=torch.float64)
    observations = ParticleObservations(target, times=[0.0, 1.0])
    still = McKeanVlasovSDE(1)  # no drift, no noise: only the nudging moves the particles
    shift = 0.05
    start = target[:, 0] + shift
    after = {}
    for scheme in ("implicit", "explicit"):
        model = NudgedSDE(still, observations, 0.2, 1e6, scheme=scheme, substeps=1, grid=Grid(-8, 8, 1024))
        moved = model.step(0.0, start, 0.01, None)
        after[scheme] = float((moved - target[:, 0]).mean())
    assert 0.0 <= after["implicit"] < 0.5 * shift, after  # corrected, same side: no overshoot
    assert abs(after["explicit"]) > shift, after  # the explicit Euler step of the same length overshoots


def test_implicit_scheme_needs_the_grid_backend(linear_case):
    _, observations, biased = linear_case
    with pytest.raises(ValueError, match="scheme"):
        NudgedSDE(biased.sde, observations, 0.2, 1e4, backend="pairwise", scheme="implicit")
    with pytest.raises(ValueError, match="scheme"):
        NudgedSDE(biased.sde, observations, 0.2, 1e4, scheme="semi")
