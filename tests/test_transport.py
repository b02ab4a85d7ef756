"""torchmf.transport: maps against exact assignment and the Gaussian closed form; bad inputs."""
import math

import pytest
import torch

from torchmf.transport import (METHODS, TransportSolver, affine_gaussian_case, barycentric_map, resolve_method,
                               sinkhorn_potentials, tile_rows, transport_map)


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_clouds(n, seed=0, dtype=torch.float32):
    """x ~ N(m1, S1), y ~ N(m2, S2) and the closed-form Brenier map evaluated at x."""
    generator = torch.Generator().manual_seed(seed)
    m1, m2 = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    s1 = torch.tensor([[1.0, 0.3], [0.3, 0.6]], dtype=torch.float64)
    s2 = torch.tensor([[2.0, -0.4], [-0.4, 1.2]], dtype=torch.float64)

    def root(matrix):
        values, vectors = torch.linalg.eigh(matrix)
        return vectors @ torch.diag(values.sqrt()) @ vectors.T

    r1 = root(s1)
    r1_inverse = torch.linalg.inv(r1)
    a = r1_inverse @ root(r1 @ s2 @ r1) @ r1_inverse   # A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64) @ r1.T + m1
    y = torch.randn(n, 2, generator=generator, dtype=torch.float64) @ root(s2).T + m2
    closed = m2 + (x - m1) @ a.T
    return x.to(dtype), y.to(dtype), closed.to(dtype)


def relative(displacement, reference):
    return float((displacement - reference).norm() / reference.norm())


def test_sort_equals_exact_assignment_in_1d():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, generator=generator, dtype=torch.float64)
    y = 2 * torch.rand(300, 1, generator=generator, dtype=torch.float64) + 1
    assert torch.equal(transport_map(x, y, "sort"), transport_map(x, y, "exact"))
    assert torch.equal(transport_map(x, y, "auto"), transport_map(x, y, "sort"))


def test_exact_map_of_a_translation_and_a_permutation():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(200, 2, generator=generator, dtype=torch.float64)
    shift = torch.tensor([0.01, -0.02], dtype=torch.float64)
    y = (x + shift)[torch.randperm(200, generator=generator)]
    assert torch.allclose(transport_map(x, y, "exact"), x + shift)


def test_gaussian_closed_form_affine_map():
    x, y, closed = gaussian_clouds(3000)
    for method in ("sinkhorn-multiscale", "sinkhorn-online"):
        mapped = transport_map(x, y, method)
        # sampling noise of independent clouds of 3000 points dominates (measured about 0.06-0.07)
        assert relative(mapped - x, closed - x) < 0.1, method


@pytest.mark.parametrize("method", ["sinkhorn-multiscale", "sinkhorn-dense", "sinkhorn-geomloss", "sinkhorn"])
def test_sinkhorn_agrees_with_exact_assignment(method):
    x, y, _ = gaussian_clouds(800, seed=3)
    exact = transport_map(x, y, "exact")
    mapped = transport_map(x, y, method, blur=0.03)
    # converged maps at blur 0.03: the rest is the blur (measured 0.03-0.05)
    assert relative(mapped - x, exact - x) < 0.1


def test_debiasing_removes_the_blur_contraction():
    # same law, shifted: the optimal map is the shift; a large blur pulls the raw map to local means
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1500, 2, generator=generator, dtype=torch.float64)
    shift = torch.tensor([1.0, 0.5], dtype=torch.float64)
    y = torch.randn(1500, 2, generator=generator, dtype=torch.float64) + shift
    truth = x + shift
    raw = transport_map(x, y, "sinkhorn-dense", blur=0.5, debias=False)
    debiased = transport_map(x, y, "sinkhorn-dense", blur=0.5, debias=True)
    raw_error, debiased_error = relative(raw - x, truth - x), relative(debiased - x, truth - x)
    assert debiased_error < 0.75 * raw_error  # measured 0.11 vs 0.18; the rest is sampling noise
    geomloss = transport_map(x, y, "sinkhorn-geomloss", blur=0.5, debias=True)
    assert relative(geomloss - x, truth - x) < 0.75 * raw_error


def test_warm_start_after_a_large_move_restarts_cold():
    # translations by -s then +s (s = 10 blurs): the first potentials are a bad start for the second map
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(8))
    shift = torch.tensor([0.3, -0.2])
    for method in ("sinkhorn-multiscale", "sinkhorn-online"):
        solver = TransportSolver(method)
        solver(x, x - shift)
        mapped = solver(x, x + shift)  # before the restart rule: displacement 0.25, not 0.36 (30% off)
        assert relative(mapped - x, shift.expand_as(x)) < 0.02, method


def test_batches_dtype_and_device_follow_the_input():
    x, y, _ = gaussian_clouds(150, seed=7, dtype=torch.float64)
    batch_x, batch_y = torch.stack([x, y]), torch.stack([y, x])
    mapped = transport_map(batch_x, batch_y, "exact")
    assert mapped.shape == (2, 150, 2) and mapped.dtype == torch.float64 and mapped.device == x.device
    assert torch.equal(mapped[1], transport_map(y, x, "exact"))
    assert transport_map(x, y, "sinkhorn-dense").dtype == torch.float64


# -- bad inputs: each must raise a clear error naming the argument -----------------------------------------
BAD_INPUTS = [
    # different sizes are transported since issue 15 (tests/test_transport_weights.py); their weights are checked
    ("different sizes, negative weights",
     lambda: transport_map(torch.rand(10, 2), torch.rand(11, 2), target_weights=-torch.ones(11)), ValueError,
     "target_weights"),
    ("different dimensions", lambda: transport_map(torch.rand(10, 2), torch.rand(10, 3)), ValueError, "y"),
    ("different batch", lambda: transport_map(torch.rand(2, 10, 2), torch.rand(3, 10, 2)), ValueError, "y"),
    ("NaN in x", lambda: transport_map(torch.tensor([[math.nan, 0.0], [1.0, 1.0]]), torch.rand(2, 2)), ValueError,
     "x"),
    ("inf in y", lambda: transport_map(torch.rand(2, 2), torch.tensor([[math.inf, 0.0], [1.0, 1.0]])), ValueError,
     "y"),
    ("not a tensor", lambda: transport_map([[0.0, 1.0]], torch.rand(1, 2)), TypeError, "x"),
    ("integer tensor", lambda: transport_map(torch.ones(3, 2, dtype=torch.long), torch.rand(3, 2)), TypeError, "x"),
    ("unknown method", lambda: transport_map(torch.rand(5, 2), torch.rand(5, 2), "fast"), ValueError, "method"),
    ("sort in 2-D", lambda: transport_map(torch.rand(5, 2), torch.rand(5, 2), "sort"), ValueError, "method"),
    ("exact too large", lambda: transport_map(torch.rand(100_001, 2), torch.rand(100_001, 2), "exact"), ValueError,
     "method"),
    ("weighted exact too large", lambda: transport_map(torch.rand(10_001, 2), torch.rand(10_000, 2), "exact"),
     ValueError, "method"),
    ("omega out of (0, 2)", lambda: TransportSolver("sinkhorn", omega=2.0), ValueError, "omega"),
    ("tolerance zero", lambda: TransportSolver("sinkhorn", tolerance=0.0), ValueError, "tolerance"),
    ("max_iterations zero", lambda: TransportSolver("sinkhorn", max_iterations=0), ValueError, "max_iterations"),
    ("on_unconverged unknown", lambda: TransportSolver("sinkhorn", on_unconverged="skip"), ValueError,
     "on_unconverged"),
    ("unknown case", lambda: __import__("torchmf.transport", fromlist=["x"]).transport_case("blob", 10), ValueError,
     "name"),
    ("keops absent", lambda: transport_map(torch.rand(5, 2), torch.rand(5, 2), "sinkhorn-keops"), ValueError,
     "method"),
    ("multiscale in 4-D", lambda: transport_map(torch.rand(5, 4), torch.rand(5, 4), "sinkhorn-multiscale"),
     ValueError, "method"),
    ("negative blur", lambda: transport_map(torch.rand(5, 2), torch.rand(5, 2), "sinkhorn", blur=-1.0), ValueError,
     "blur"),
    ("scaling >= 1", lambda: TransportSolver("sinkhorn", scaling=1.0), ValueError, "scaling"),
    ("debias not bool", lambda: TransportSolver("sinkhorn", debias="yes"), TypeError, "debias"),
    ("tile_entries not int", lambda: TransportSolver("sinkhorn-online", tile_entries=1.5), TypeError, "tile_entries"),
    ("memory_budget zero", lambda: TransportSolver("sinkhorn-online", memory_budget=0), ValueError, "memory_budget"),
    ("affine case of no points", lambda: affine_gaussian_case(0), ValueError, "n"),
    ("affine case negative seed", lambda: affine_gaussian_case(10, seed=-1), ValueError, "seed"),
    ("potentials of different d", lambda: sinkhorn_potentials(torch.rand(5, 2), torch.rand(5, 3)), ValueError, "y"),
    ("potentials, negative weights",
     lambda: sinkhorn_potentials(torch.rand(3, 2), torch.rand(3, 2), a=torch.tensor([0.5, 0.6, -0.1])), ValueError,
     "a"),
]


@pytest.mark.parametrize("label, call, error, name", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(label, call, error, name):
    pytest.importorskip("scipy")
    if label == "keops absent":
        from torchmf.transport import keops_available

        if keops_available():
            pytest.skip("pykeops is installed here")
    with pytest.raises(error, match=rf"^{name}:"):
        call()


def test_method_table_is_complete():
    assert set(METHODS) == {"auto", "sort", "exact", "sinkhorn", "sinkhorn-geomloss", "sinkhorn-keops",
                            "sinkhorn-online", "sinkhorn-dense", "sinkhorn-multiscale"}
    assert resolve_method("sinkhorn-dense", 100, 2) == "sinkhorn-online"  # old name kept as an alias


# -- the online (tiled) Sinkhorn ------------------------------------------------------------------------------
def small_pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    y = 0.7 * torch.randn(250, 2, generator=generator, dtype=torch.float64) + 1.0
    return x, y


@pytest.mark.parametrize("debias", [False, True])
def test_online_potentials_equal_geomloss_tensorized(debias):
    from geomloss import SamplesLoss

    x, y = small_pair()
    loss = SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.7, debias=debias, potentials=True, backend="tensorized")
    f_reference, g_reference = loss(x, y)
    potentials = sinkhorn_potentials(x, y, blur=0.1, scaling=0.7, debias=debias)
    f, g = potentials.debiased()
    assert f.shape == (300,) and g.shape == (250,) and f.dtype == torch.float64
    assert torch.allclose(f, f_reference.reshape(-1), atol=1e-12, rtol=0)  # measured 4e-15
    assert torch.allclose(g, g_reference.reshape(-1), atol=1e-12, rtol=0)
    # the map from either set of potentials is the same
    reference = potentials._replace(g=g_reference.reshape(-1) + (potentials.g_self if debias else 0))
    assert torch.allclose(barycentric_map(x, y, potentials, debias=False),
                          barycentric_map(x, y, reference, debias=False), atol=1e-10)


def test_tile_sizes_do_not_change_the_result():
    x, y = small_pair(1)
    whole = sinkhorn_potentials(x, y, blur=0.2, tile_entries=300 * 250)
    for entries in (300, 7 * 300, 101 * 300):  # rows of at least 300 columns (the transposed kernel)
        tiled = sinkhorn_potentials(x, y, blur=0.2, tile_entries=entries)
        assert torch.allclose(tiled.f, whole.f, atol=1e-12, rtol=0) and torch.allclose(tiled.g, whole.g, atol=1e-12)
        assert torch.allclose(barycentric_map(x, y, tiled, tile_entries=entries), barycentric_map(x, y, whole),
                              atol=1e-12)
    assert tile_rows(300, 250, 8, "cpu", tile_entries=7 * 250 + 3) == 7
    assert tile_rows(300, 250, 8, "cpu", memory_budget=250 * 8 * 2 * 5) == 5


def test_debiased_map_is_geomloss_debiased_gradient():
    from geomloss import SamplesLoss

    x, y = small_pair(2)
    source = x.clone().requires_grad_(True)
    loss = SamplesLoss("sinkhorn", p=2, blur=0.3, scaling=0.95, debias=True, backend="tensorized")(source, y)
    gradient, = torch.autograd.grad(loss, source)
    reference = -x.shape[0] * gradient  # T(x) - x = -grad_x S / a_i
    potentials = sinkhorn_potentials(x, y, blur=0.3, scaling=0.95, debias=True)
    debiased = barycentric_map(x, y, potentials) - x
    raw = barycentric_map(x, y, potentials, debias=False) - x
    # geomloss differentiates the potentials of its second-to-last half step: the gap is convergence
    # (measured 0.24%); without debiasing the map is 4.8% away
    assert relative(debiased, reference) < 0.005
    assert relative(raw, reference) > 0.03


def test_online_map_of_the_affine_gaussian_case_within_two_percent():
    x, y, exact = affine_gaussian_case(1500)
    mapped = transport_map(x, y, "sinkhorn-online")
    assert mapped.dtype == torch.float32
    assert relative(mapped - x, exact - x) < 0.02  # measured 0.5%
    small_tiles = transport_map(x, y, "sinkhorn-online", tile_entries=1500 * 13)
    assert relative(small_tiles, mapped) < 1e-5


def test_online_budget_too_small_is_a_clear_error():
    x, y, _ = affine_gaussian_case(200)
    with pytest.raises(ValueError, match=r"^memory_budget: one row tile .* needs 1,600 bytes .* budget .* is 1,000 bytes"):
        transport_map(x, y, "sinkhorn-online", memory_budget=1000)
    with pytest.raises(ValueError, match=r"^tile_entries: one row tile needs 200 entries"):
        sinkhorn_potentials(x, y, tile_entries=199)
    with pytest.raises(ValueError, match=r"^memory_budget"):
        tile_rows(10, 10 ** 12, 4, "cpu")  # 8 TB for one row: more than any machine's free memory


def test_sinkhorn_routing_never_picks_keops_or_the_unconverged_geomloss_loop():
    # "auto": sort in 1-D, the exact assignment up to N = 30,000 (sparse, certified; 3,000 for weighted
    # or unequal clouds, POT's network simplex), then the converged torch solvers
    from torchmf.transport.routing import exact_limits
    from torchmf.transport.sparse_assignment import ortools_available

    assert resolve_method("auto", 50_000, 1, "cpu") == "sort"
    # 30,000 with OR-Tools (the optional extra "exact", in "dev"); POT's network simplex limit without it
    limit, _ = exact_limits()
    assert limit == (30_000 if ortools_available() else 3_000)
    assert resolve_method("auto", limit, 2, "cpu") == "exact"
    assert resolve_method("auto", limit + 1, 2, "cpu") in ("sinkhorn-multiscale", "sinkhorn-online")
    assert resolve_method("auto", 3000, 2, "cpu", weighted=True) == "exact"
    assert resolve_method("auto", 4001, 2, "cpu", weighted=True) == "sinkhorn-multiscale"
    # CPU "sinkhorn": dense tiles up to N = 4,000, the sparse kernel beyond (d <= 3)
    assert resolve_method("sinkhorn", 500, 3, "cpu") == "sinkhorn-online"
    assert resolve_method("sinkhorn", 4001, 3, "cpu") == "sinkhorn-multiscale"
    assert resolve_method("sinkhorn", 50_000, 5, "cpu") == "sinkhorn-online"
    assert resolve_method("sinkhorn", 2000, 2, "cuda", tiling=(None, 80 * 10 ** 9)) == "sinkhorn-online"


def test_pykeops_is_not_imported_by_the_sinkhorn_paths():
    import os
    import subprocess
    import sys

    code = ("import sys, torch; from torchmf.transport import transport_map, sinkhorn_potentials; "
            "x = torch.randn(200, 2); y = torch.randn(200, 2) + 1; "
            "[transport_map(x, y, m) for m in ('sinkhorn', 'sinkhorn-online', 'sinkhorn-multiscale', 'auto')]; "
            "sinkhorn_potentials(x[:100], y[:100]); print('pykeops' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.stdout.strip() == "False", result.stderr[-2000:]
