"""keller_segel_2d: the dense exact force against the pairwise backend; the uniform-disk mean-field flow."""
import math

import torch

from torchmf import systems
from torchmf.interaction import InteractionForce
from torchmf.kernels import LogPotential
from torchmf.systems.keller_segel import keller_segel_force


def test_dense_force_matches_pairwise_backend_including_coincident_particles():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 300, 2, generator=generator, dtype=torch.float64) * 2 - 1
    x[0, 1] = x[0, 0]  # coincident pair: grad K(0) = 0
    x[0, 2] = x[0, 0] + 0.003  # inside the cutoff
    expected = InteractionForce(LogPotential(0.01), backend="pairwise")(x)
    assert torch.allclose(keller_segel_force(x, 0.01, block=64), expected, atol=1e-10)


def test_uniform_disk_contracts_at_the_mean_field_rate():
    # sigma = 0: a uniform disk stays uniform with radius^2 = R0^2 - t / pi
    system = systems.get("keller_segel_2d", backend="dense")
    data = system.simulate(n_particles=1500, times=[0.0, 2.0], dt=0.1, seed=0, progress=False, dtype=torch.float64)
    ratio = data.positions[0, 1].norm(dim=-1).pow(2).mean() / data.positions[0, 0].norm(dim=-1).pow(2).mean()
    assert abs(float(ratio) - (4 - 2 / math.pi) / 4) < 0.01
    assert torch.allclose(system.grad_K(torch.tensor([[0.5, 0.0]])), torch.tensor([[1 / (2 * math.pi * 0.5), 0.0]]))
