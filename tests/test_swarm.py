"""swarm_ring: shapes, extras, schooling in a ring, KDE images.

Bad inputs tried: arena larger than the frame (``arena_radius``), non-positive speed
(``speed``), negative noise (``noise``).
"""
from __future__ import annotations

import pytest
import torch

from torchmf import systems


def test_schooling_ring_and_records():
    system = systems.get("swarm_ring")
    run = system.simulate(n_particles=200, n_experiments=2, t_end=1.0, seed=0, progress=False)
    assert run.positions.shape == (2, 21, 200, 2) and run.extras["velocities"].shape == (2, 21, 200, 2)
    radius = (run.positions[:, -1] - 62.5).norm(dim=-1)
    assert 30 < float(radius.mean()) < 45 and float(radius.std()) < 8
    speed = run.extras["velocities"][:, -1].norm(dim=-1)
    assert 18 < float(speed.mean()) < 30
    # counter-clockwise schooling: angular momentum keeps its sign
    offset = run.positions[:, -1] - 62.5
    velocity = run.extras["velocities"][:, -1]
    assert float((offset[..., 0] * velocity[..., 1] - offset[..., 1] * velocity[..., 0]).mean()) > 0
    again = system.simulate(n_particles=200, n_experiments=2, t_end=1.0, seed=0, progress=False)
    assert torch.equal(run.positions, again.positions)


def test_image_mass_counts_only_fish_in_the_frame():
    system = systems.get("swarm_ring")
    school = torch.tensor([[62.5, 62.5], [40.0, 80.0], [90.0, 30.0], [500.0, 500.0]])
    image = system.image(school, bandwidth=2.0)
    mass = float(image.sum() * system.image_grid().cell_volume)
    assert image.shape == (125, 125) and abs(mass - 0.75) < 1e-3
    assert float(system.image_error(school, school)) == 0.0


def test_bad_inputs():
    for build, name in [
        (lambda: systems.get("swarm_ring", arena_radius=80.0), "arena_radius"),
        (lambda: systems.get("swarm_ring", speed=0.0), "speed"),
        (lambda: systems.get("swarm_ring", noise=-1.0), "noise"),
    ]:
        with pytest.raises((ValueError, TypeError), match=name):
            build()
