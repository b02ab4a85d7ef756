"""Issue 25: ``qanr_1d`` gives the same bytes on 1 and 2 threads above torch's parallel-reduction size.

Before, ``values.mean`` was split among threads from 32768 particles on and its rounding depended on
the thread count (N = 5e4: 8.75% of the entries differed). The force is also checked against an
independent O(N^2) evaluation of ``K'(x) = x - sign(x)`` on a small ensemble.
"""
import math

import pytest
import torch

from torchmf import systems
from torchmf.systems.qanr import qanr_mean_field_force


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _on_threads(threads, function):
    torch.set_num_threads(threads)
    return function()


@pytest.mark.parametrize("n", [50_000, 200_000])
def test_qanr_force_has_the_same_bytes_on_one_and_two_threads(n, restore_threads):
    x = torch.randn(1, n, 1, generator=torch.Generator().manual_seed(n)) * 2.0
    one, two = (_on_threads(threads, lambda: qanr_mean_field_force(x)) for threads in (1, 2))
    assert torch.equal(one, two)
    # float64 (no ties among n normal draws, unlike float32): the mean term against an exactly rounded sum
    values = torch.randn(1, n, 1, generator=torch.Generator().manual_seed(n), dtype=torch.float64).sort(dim=1).values
    assert bool((values.diff(dim=1) > 0).all())
    mean = math.fsum(values.flatten().tolist()) / n
    ranks = torch.arange(n, dtype=torch.float64)
    expected = values.flatten() - mean - (ranks - (n - 1 - ranks)) / n
    assert torch.allclose(qanr_mean_field_force(values).flatten(), expected, rtol=0, atol=1e-13)


def test_qanr_simulation_at_n_5e4_has_the_same_bytes_on_one_and_two_threads(restore_threads):
    system = systems.get("qanr_1d", diffusion="variable")
    runs = [_on_threads(threads, lambda: system.simulate(n_particles=50_000, t_end=0.01, seed=0, progress=False))
            for threads in (1, 2)]
    assert torch.equal(runs[0].positions, runs[1].positions)


def test_qanr_force_matches_the_pairwise_sum():
    x = torch.randn(2, 300, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0, 5] = x[0, 7]  # a tie: sign(0) = 0
    difference = x - x.transpose(1, 2)  # (M, N, N): x_i - x_j
    pairwise = (difference - torch.sign(difference)).mean(-1, keepdim=True)
    assert torch.allclose(qanr_mean_field_force(x), pairwise, atol=1e-12)
