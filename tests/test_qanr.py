"""qanr_1d: the exact O(N log N) force against the O(N^2) sum, and the diffusivity modes."""
import math

import torch

from torchmf import systems
from torchmf.systems.qanr import qanr_mean_field_force


def _brute_force(x):
    values = x.squeeze(-1)
    difference = values.unsqueeze(-1) - values.unsqueeze(-2)
    return (difference - torch.sign(difference)).mean(-1).unsqueeze(-1)


def test_sorted_force_matches_pairwise_sum_with_ties():
    x = torch.tensor([[0.0, 0.0, 1.0, 2.0, 2.0, 2.0, -1.0]], dtype=torch.float64).unsqueeze(-1)
    assert torch.allclose(qanr_mean_field_force(x), _brute_force(x))
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 700, 1, generator=generator, dtype=torch.float64).round(decimals=1)  # many ties
    assert torch.allclose(qanr_mean_field_force(batch), _brute_force(batch))


def test_diffusivity_modes_and_simulation_shape():
    x = torch.tensor([[0.0], [3.0]], dtype=torch.float64)
    assert torch.equal(systems.get("qanr_1d").sigma(x), torch.zeros_like(x))
    assert torch.allclose(systems.get("qanr_1d", diffusion="constant").sigma(x), torch.full_like(x, math.sqrt(2) * 0.1))
    assert torch.allclose(systems.get("qanr_1d", diffusion="variable").sigma(x),
                          math.sqrt(2) * 0.1 * torch.tensor([[2.0], [1.0]], dtype=torch.float64))
    data = systems.get("qanr_1d").simulate(n_particles=300, n_experiments=2, t_end=0.05, seed=1, progress=False)
    assert data.positions.shape == (2, 6, 300, 1)
    # sigma = 0: the mean is conserved exactly (the force is odd)
    assert torch.allclose(data.positions.mean(2)[:, -1], data.positions.mean(2)[:, 0], atol=1e-5)
