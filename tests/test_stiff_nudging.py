"""Stiff nudging (issue 13): the implicit scheme keeps large lambda cheap, finite and accurate."""
import pytest
import torch

from torchmf import systems
from torchmf.metrics import w2
from torchmf.nudging import NudgedSDE, ParticleObservations


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


def test_implicit_filter_damps_every_mode_by_one_over_one_plus_rate(linear_case):
    reference, observations, biased = linear_case
    model = NudgedSDE(biased.sde, observations, 0.2, 1.0)
    grid = model.grid
    field = torch.randn(1, *grid.shape, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(model._implicit_field(field, 0.0), field, atol=1e-12)  # no damping: unchanged
    # a single long-wave mode, well inside the grid: damped by 1 / (1 + c k^2 exp(-k^2 h^2))
    nodes = grid.nodes(dtype=torch.float64)[..., 0]
    width = grid.upper[0] - grid.lower[0]
    k = 2 * torch.pi / (width / 4)
    envelope = torch.exp(-((nodes - nodes.mean()) / (width / 6)) ** 2)
    mode = (torch.cos(k * nodes) * envelope).reshape(1, -1, 1)
    damping = 0.05
    filtered = model._implicit_field(mode, damping)
    expected = 1 / (1 + damping * k ** 2 * torch.exp(torch.tensor(-(k * 0.2) ** 2)))
    centre = slice(grid.shape[0] // 2 - 20, grid.shape[0] // 2 + 20)
    ratio = filtered[0, centre, 0].norm() / mode[0, centre, 0].norm()
    assert abs(float(ratio) - float(expected)) < 0.05 * float(expected), (float(ratio), float(expected))


def test_implicit_scheme_needs_the_grid_backend(linear_case):
    _, observations, biased = linear_case
    with pytest.raises(ValueError, match="scheme"):
        NudgedSDE(biased.sde, observations, 0.2, 1e4, backend="pairwise", scheme="implicit")
    with pytest.raises(ValueError, match="scheme"):
        NudgedSDE(biased.sde, observations, 0.2, 1e4, scheme="semi")
