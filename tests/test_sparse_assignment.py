"""The certified sparse assignment against POT's network simplex, on clouds it was not tuned on.

The sparse solver was tuned (cluster size, candidate count) on the eight families of
:mod:`torchmf.transport.cases`; these inputs are different: a cross to a spiral, ties on lattices,
repeated points, a 3-D shell to a line, huge coordinates, float32.
"""
import math

import numpy as np
import pytest
import torch

from torchmf.transport import transport_map
from torchmf.transport.exact import assignment, dense_assignment
from torchmf.transport import sparse_assignment as sparse_module
from torchmf.transport.sparse_assignment import sparse_assignment

pytestmark = pytest.mark.skipif(not sparse_module.ortools_available(), reason="OR-Tools is not installed")


def _cross(n, generator):
    arm = torch.rand(n, generator=generator) * 2 - 1
    horizontal = torch.rand(n, generator=generator) < 0.5
    width = 0.05 * torch.randn(n, generator=generator)
    return torch.where(horizontal[:, None], torch.stack([arm, width], 1), torch.stack([width, arm], 1))


def _spiral(n, generator):
    turn = 3 * math.pi * torch.rand(n, generator=generator).sqrt()
    radius = 0.15 * turn + 0.03 * torch.randn(n, generator=generator)
    return torch.stack([radius * turn.cos(), radius * turn.sin()], 1) + torch.tensor([3.0, 0.5])


def _lattice(side, shift):
    axis = torch.arange(side, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis) + shift


def _held_out_pairs():
    generator = torch.Generator().manual_seed(7)
    n = 1200
    shell = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    shell = shell / shell.norm(dim=1, keepdim=True)
    line = torch.zeros(n, 3, dtype=torch.float64)
    line[:, 2] = torch.linspace(-4, 4, n, dtype=torch.float64)
    repeated = torch.randn(30, 2, generator=generator, dtype=torch.float64).repeat(40, 1)
    pairs = {
        "cross_to_spiral": (_cross(n, generator).double(), _spiral(n, generator).double()),
        "lattice_ties": (_lattice(35, 0.0), _lattice(35, 0.5)),          # 1225 points, many equal costs
        "repeated_points": (repeated, torch.rand(1200, 2, generator=generator, dtype=torch.float64)),
        "shell_to_line_3d": (shell, line),
        "huge_coordinates": (1e4 + torch.randn(n, 2, generator=generator, dtype=torch.float64),
                             1e4 + 3 + torch.rand(n, 2, generator=generator, dtype=torch.float64)),
    }
    # targets in random order, so that the identity pairing is a baseline, not the answer
    return {name: (x, y[torch.randperm(len(y), generator=generator)]) for name, (x, y) in pairs.items()}


def _cost(x, y, partner):
    return float(((x - y[partner]) ** 2).sum(1).mean())


@pytest.mark.parametrize("name", list(_held_out_pairs()))
def test_sparse_assignment_is_optimal_on_held_out_clouds(name):
    x, y = _held_out_pairs()[name]
    source, target = x.numpy(), y.numpy()
    solved = sparse_assignment(source, target)
    assert solved is not None, "no certificate within MAX_PRICING rounds"
    partner, rounds = solved
    assert np.array_equal(np.sort(partner), np.arange(len(partner)))  # a permutation
    reference = dense_assignment(source, target)  # POT's network simplex, an independent solver
    optimum = _cost(source, target, reference)
    # optimal to the rounding of the integer costs (ties may pick another permutation)
    assert abs(_cost(source, target, partner) - optimum) <= 1e-9 * max(optimum, 1e-300) + 1e-12
    # baselines that fail: the identity pairing and the nearest-neighbour guess
    assert _cost(source, target, np.arange(len(partner))) > optimum * (1 + 1e-3)


def test_without_the_certificate_the_candidate_graph_is_not_enough(monkeypatch):
    """One pricing round with two candidates per row and column is not optimal here: the certificate
    is what makes the answer exact (baseline for the pricing loop)."""
    x, y = _held_out_pairs()["cross_to_spiral"]
    source, target = x.numpy(), y.numpy()
    optimum = _cost(source, target, dense_assignment(source, target))
    monkeypatch.setattr(sparse_module, "CANDIDATES", 2)
    monkeypatch.setattr(sparse_module, "MAX_PRICING", 1)
    assert sparse_module.sparse_assignment(source, target) is None  # no certificate after one round
    monkeypatch.setattr(sparse_module, "MAX_PRICING", 30)
    partner, rounds = sparse_module.sparse_assignment(source, target)
    assert rounds > 1
    assert abs(_cost(source, target, partner) - optimum) <= 1e-9 * optimum


def test_float32_input_and_device_follow_through_the_public_map():
    x, y = _held_out_pairs()["cross_to_spiral"]
    mapped = transport_map(x.float(), y.float(), "exact")
    assert mapped.dtype == torch.float32 and mapped.shape == x.shape
    reference = dense_assignment(x.numpy(), y.numpy())
    assert _cost(x.numpy(), y.numpy(), reference) == pytest.approx(
        float((x.float() - mapped).pow(2).sum(1).double().mean()), rel=1e-6)


def test_assignment_falls_back_to_the_network_simplex_without_ortools(monkeypatch):
    import torchmf.transport.exact as exact_module

    x, y = _held_out_pairs()["shell_to_line_3d"]
    monkeypatch.setattr(exact_module, "ortools_available", lambda: False)
    partner, matched = assignment(x, y)
    assert matched.mean() == pytest.approx(_cost(x.numpy(), y.numpy(), dense_assignment(x.numpy(), y.numpy())),
                                           rel=1e-12)


@pytest.mark.parametrize("x, y, error, match", [
    (torch.rand(5, 2).double(), np.zeros((5, 2)), TypeError, "^x: expected a numpy array"),
    (np.zeros((5, 2), dtype=np.float32), np.zeros((5, 2)), ValueError, "^x: expected a non-empty float64"),
    (np.zeros((0, 2)), np.zeros((0, 2)), ValueError, "^x: expected a non-empty float64"),
    (np.zeros((5, 2)), np.zeros((6, 2)), ValueError, r"^y: expected the shape of x, \(5, 2\)"),
    (np.zeros((5, 2)), np.full((5, 2), np.nan), ValueError, "^y: expected finite entries, but got 10"),
])
def test_sparse_assignment_names_the_bad_argument(x, y, error, match):
    with pytest.raises(error, match=match):
        sparse_assignment(x, y)
