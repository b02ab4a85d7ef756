"""local_2d: homogenized diffusivity (closed form) and the exact mean drift."""
import math

import torch
from scipy.special import ellipk

from torchmf import systems


def test_homogenized_diffusivity_is_the_harmonic_mean():
    # mean of 1 / (1 + a cos u cos v) over the torus is (2 / pi) K(a^2) (complete elliptic integral)
    system = systems.get("local_2d", omega=20.0)
    assert abs(system.homogenized_diffusivity() - 1 / ((2 / math.pi) * ellipk(0.95 ** 2))) < 1e-9


def test_mean_moves_with_the_constant_advection():
    system = systems.get("local_2d")
    data = system.simulate(n_particles=4000, times=[0.0, 0.2], dt=2e-3, seed=0, progress=False, dtype=torch.float64)
    shift = data.positions[0, 1].mean(0) - data.positions[0, 0].mean(0)
    spread = float(data.positions[0, 1].std(0).max()) / math.sqrt(4000)
    assert torch.allclose(shift, torch.tensor([0.2, 0.2], dtype=torch.float64), atol=4 * spread)
