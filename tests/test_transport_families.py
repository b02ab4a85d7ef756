"""Transport maps and W2 on clouds the solver was not tuned on (torchmf.transport.cases), against
the exact assignment (POT's network simplex) and a long converged solve of the other kernel.

Every check also computes a trivial answer that must fail it: the identity map (standing still)
for maps and velocities, geomloss' one-update-per-level loop for "converged"."""
import math
import warnings

import pytest
import torch

from torchmf.transport import (TRANSPORT_CASES, TransportNotConverged, TransportSolver, UnconvergedTransportWarning,
                               transport_case, transport_map)
from torchmf.transport.exact import assignment

pytestmark = pytest.mark.usefixtures("one_thread")

N = 700  # small enough for the default suite; bench_transport.py runs N = 2,000 to 30,000


def map_error(mapped, x, exact):
    """Relative L2 error of the displacement: ||T - T_exact|| / ||T_exact - x||."""
    return float((mapped - exact).norm() / (exact - x).norm())


@pytest.fixture(scope="module")
def cases():
    out = {}
    for name in TRANSPORT_CASES:
        x, y = transport_case(name, N, seed=1)
        partner, matched = assignment(x, y)
        out[name] = (x, y, y[partner], math.sqrt(float(matched.mean())))
    return out


_CONVERGED = {}


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn-multiscale"])
@pytest.mark.parametrize("name", list(TRANSPORT_CASES))
def test_default_sinkhorn_map_is_converged_quality_on_every_family(cases, name, method):
    x, y, exact, _ = cases[name]
    solver = TransportSolver(method, on_unconverged="raise")
    mapped = solver(x, y)
    assert solver.last_report.converged
    # reference: the dense kernel run far past the default tolerance (computed once per family)
    if name not in _CONVERGED:
        _CONVERGED[name] = TransportSolver("sinkhorn-online", tolerance=1e-4, max_iterations=20_000)(x, y)
    converged = _CONVERGED[name]
    error, reference = map_error(mapped, x, exact), map_error(converged, x, exact)
    assert error <= 1.25 * reference, (error, reference)
    # the blur (5% of the spread) bounds what any converged map can reach: in 3-D at N = 700 the
    # converged dense solve itself is 0.158 away from the assignment (measured), in 2-D <= 0.07
    assert error <= (0.10 if x.shape[1] == 2 else 0.20), error
    assert map_error(x, x, exact) > 0.10  # standing still fails


def _cross_and_spiral(n, seed):
    generator = torch.Generator().manual_seed(seed)
    turn = 4 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    spiral = torch.stack([turn * turn.cos(), turn * turn.sin()], 1) / 6
    spiral += 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    cross = torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 0.3], dtype=torch.float64)
    cross[n // 2:] = cross[n // 2:].flip(1)
    cross[: n // 2, 0] -= 1.5
    cross[n // 2:, 1] -= 1.5
    return cross, spiral


def test_sparse_kernel_support_is_completed_on_a_held_out_pair():
    """Cross to spiral (not a tuning family): the sparse kernel converged to another problem's
    solution, 1.28x the dense error (0.0916 against 0.0717), until converged solves were checked
    against the dense soft-min and the missing pairs added."""
    x, y = _cross_and_spiral(2000, 99)
    exact = y[assignment(x, y)[0]]
    solver = TransportSolver("sinkhorn-multiscale", on_unconverged="raise")
    sparse = solver(x, y)
    dense = TransportSolver("sinkhorn-online", tolerance=1e-4, max_iterations=20_000)(x, y)
    error, reference = map_error(sparse, x, exact), map_error(dense, x, exact)
    assert error <= 1.05 * reference, (error, reference)
    assert map_error(x, x, exact) > 10 * reference  # standing still fails


def test_exact_backend_is_an_optimal_assignment():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    x, y = transport_case("mixture_to_ring", 300, seed=2)
    cost = torch.cdist(x, y).pow(2).numpy()
    rows, columns = scipy_optimize.linear_sum_assignment(cost)
    mapped = transport_map(x, y, "exact")
    ours = float((mapped - x).pow(2).sum(1).mean())
    assert abs(ours - float(cost[rows, columns].mean())) < 1e-12
    assert torch.equal(mapped.sort(0).values, y.sort(0).values)  # a permutation of y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_input_and_float32_converges(dtype):
    x, y = transport_case("square_to_banana", 600, seed=3, dtype=dtype)
    solver = TransportSolver("sinkhorn", on_unconverged="raise")
    mapped = solver(x, y)
    assert mapped.dtype == dtype and solver.last_report.converged
    partner, _ = assignment(x, y)
    assert map_error(mapped.double(), x.double(), y.double()[partner]) < 0.10


def test_unconverged_solve_warns_or_raises_and_reports():
    x, y = transport_case("far_apart", 500)
    with pytest.warns(UnconvergedTransportWarning, match="unconverged after"):
        solver = TransportSolver("sinkhorn-online", max_iterations=2)
        solver(x, y)
    assert not solver.last_report.converged and solver.last_report.error > solver.tolerance
    with pytest.raises(TransportNotConverged):
        transport_map(x, y, "sinkhorn-multiscale", max_iterations=2, on_unconverged="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transport_map(x, y, "sinkhorn-online", max_iterations=2, on_unconverged="ignore")


def test_warm_start_converges_to_the_long_solve():
    x, y = transport_case("mixture_to_ring", 1500, seed=4)
    y_next = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    long = TransportSolver("sinkhorn-online", debias=False, tolerance=1e-5, max_iterations=20_000)(x, y_next)
    for method, within in (("sinkhorn-online", 0.01), ("sinkhorn-multiscale", 0.03)):
        solver = TransportSolver(method, debias=False, on_unconverged="raise")
        solver(x, y)
        cold_iterations = solver.last_iterations
        warm = solver(x, y_next)
        # a warm start runs to 0.3 x tolerance or is redone cold (the multiscale one may also retry
        # densely inside): at most three cold solves' work
        assert solver.last_report.converged and solver.last_iterations <= 3 * cold_iterations + 1, method
        # measured: online 0.7% from the long dense solve, multiscale 1.6% (its truncated kernel:
        # its cold solve is 1.9% away too)
        assert float((warm - long).norm() / (long - x).norm()) < within, method


@pytest.mark.parametrize("name", ["square_to_banana", "mixture_to_ring", "unequal_spreads", "cube_to_shell_3d"])
def test_w2_sinkhorn_within_two_percent_of_exact(cases, name):
    from torchmf.metrics import w2

    x, y, _, exact_w2 = cases[name]
    assert abs(float(w2(x, y, method="exact")) - exact_w2) < 1e-9
    value = float(w2(x, y, method="sinkhorn"))
    assert abs(value / exact_w2 - 1) < 0.02, (value, exact_w2)
