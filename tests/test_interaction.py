import pytest
import torch

from torchmf.grid import Grid
from torchmf.interaction import InteractionForce, interaction_force
from torchmf.kernels import GaussianKernel, LogPotential, MorsePotential, PeriodicKernel, PowerPotential, QANRPotential
from torchmf.metrics import relative_error
from torchmf.systems.qanr import qanr_mean_field_force


def cloud(n, d=2, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def brute_force(kernel, x, y):
    return kernel.gradient(x[:, None] - y[None]).mean(1)


@pytest.mark.parametrize("kernel", [GaussianKernel(0.5, 2), MorsePotential(1.0, 1.5, 0.6, 0.4), LogPotential(0.01),
                                    PowerPotential(3.0)], ids=lambda k: type(k).__name__)
def test_pairwise_matches_brute_force_and_chunking(kernel):
    x, y = cloud(300), cloud(250, seed=1)
    reference = brute_force(kernel, x, y)
    for chunk in (None, 7, 1000):
        result = InteractionForce(kernel, "pairwise", chunk_size=chunk)(x, y)
        assert torch.allclose(result, reference, atol=1e-12, rtol=1e-9)


def test_quadratic_potential_closed_form():
    x = cloud(400, 3)
    a = 1.7
    result = InteractionForce(PowerPotential(2, a / 2), "pairwise")(x)
    assert torch.allclose(result, a * (x - x.mean(0)), atol=1e-12)
    assert torch.allclose(brute_force(PowerPotential(2, a / 2), x, x), result, atol=1e-12)


def test_qanr_sorted_force_is_exact():
    x = cloud(500, 1)
    assert torch.allclose(qanr_mean_field_force(x), brute_force(QANRPotential(), x, x), atol=1e-12)


@pytest.mark.parametrize("kernel", [GaussianKernel(0.5, 2), MorsePotential(1.0, 1.5, 0.6, 0.4)],
                         ids=lambda k: type(k).__name__)
def test_grid_agrees_with_pairwise_free_space(kernel):
    x = cloud(3000, dtype=torch.float32)
    exact = InteractionForce(kernel, "pairwise")(x)
    gridded = InteractionForce(kernel, "grid", grid=Grid(-6, 6, 256, dim=2))(x)
    assert float(relative_error(gridded, exact)) < 1e-2
    # grid error falls with resolution (second order)
    coarse = InteractionForce(kernel, "grid", grid=Grid(-6, 6, 64, dim=2))(x)
    assert float(relative_error(coarse, exact)) > 2 * float(relative_error(gridded, exact))


def test_grid_agrees_with_pairwise_periodic():
    box = 4.0
    x = torch.rand(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * box
    kernel = PeriodicKernel(GaussianKernel(0.4, 2), box, images=1)
    exact = InteractionForce(kernel, "pairwise")(x)
    gridded = InteractionForce(kernel, "grid", grid=Grid(0, box, 128, periodic=True, dim=2))(x)
    assert float(relative_error(gridded, exact)) < 1e-2


def test_gaussian_force_on_symmetric_pair_closed_form():
    h = 0.8
    x = torch.tensor([[0.5, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    force = interaction_force(x, None, GaussianKernel(h, 2), backend="pairwise")
    value = GaussianKernel(h, 2).value(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    # grad K(x1 - x2) / 2, self term zero
    assert torch.allclose(force[0], torch.tensor([-1.0 / h**2 * float(value) / 2, 0.0], dtype=torch.float64))


def test_batch_dimensions_are_independent_experiments():
    x = cloud(400).reshape(2, 200, 2)
    kernel = GaussianKernel(0.5, 2)
    batched = InteractionForce(kernel, "pairwise")(x)
    assert torch.allclose(batched[1], InteractionForce(kernel, "pairwise")(x[1]))
    grid = Grid(-6, 6, 128, dim=2)
    batched_grid = InteractionForce(kernel, "grid", grid=grid)(x)
    assert torch.allclose(batched_grid[0], InteractionForce(kernel, "grid", grid=grid)(x[0]), atol=1e-12)


def test_dtype_follows_input():
    for dtype in (torch.float32, torch.float64):
        x = cloud(100, dtype=dtype)
        for backend in ("pairwise", "grid"):
            assert InteractionForce(GaussianKernel(0.5, 2), backend)(x).dtype == dtype


def test_keops_backend_matches_pairwise():
    pytest.importorskip("pykeops", reason="pykeops (optional 'keops' extra) is not installed")
    x = cloud(500, dtype=torch.float32)
    kernel = GaussianKernel(0.5, 2)
    assert torch.allclose(InteractionForce(kernel, "keops")(x), InteractionForce(kernel, "pairwise")(x), atol=1e-5)


def test_pairwise_float32_stays_a_reference():
    """float32 pairwise forces within 2e-6 (relative to the largest force) of float64 at N = 4000;
    the expanded ``x S 1 - S y`` form in float32 (the old evaluation, centred per chunk) misses it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=generator, dtype=torch.float64) * 2 + 5
    kernel = GaussianKernel(0.5, dim=2)
    force = InteractionForce(kernel, backend="pairwise")
    reference = force(x)
    scale = reference.norm(dim=-1).max()
    error = float((force(x.float()).double() - reference).norm(dim=-1).max() / scale)

    def expanded(queries, sources):
        centre = queries.mean(-2, keepdim=True)
        queries, sources = queries - centre, sources - centre
        distance = torch.cdist(queries, sources, compute_mode="donot_use_mm_for_euclid_dist")
        safe = torch.where(distance > 0, distance, torch.ones_like(distance))
        weights = torch.where(distance > 0, kernel.profile_derivative(safe) / safe, torch.zeros_like(distance))
        weights = weights / sources.shape[0]
        return queries * weights.sum(-1, keepdim=True) - weights @ sources

    single = x.float()
    baseline = torch.cat([expanded(single[i:i + 256], single) for i in range(0, 4000, 256)])
    baseline_error = float((baseline.double() - reference).norm(dim=-1).max() / scale)
    assert error < 2e-6, error
    assert baseline_error > 2e-6, baseline_error


def test_quadratic_interaction_gives_the_same_bytes_on_any_thread_count():
    """ou_linear's mean-field sum no longer follows torch's thread split: 1, 2 and 4 threads, same bytes."""
    from torchmf import systems
    from torchmf.interaction import ordered_sum

    values = torch.randn(3, 200_003, 2, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        sums, runs = [], []
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            sums.append(ordered_sum(values, -2))
            runs.append(systems.get("ou_linear").simulate(n_particles=100_000, t_end=0.02, seed=0,
                                                          progress=False).positions)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(sums[0], other) for other in sums[1:])
    assert all(torch.equal(runs[0], other) for other in runs[1:])
    assert torch.allclose(sums[0], values.double().sum(-2, keepdim=True).float(), rtol=1e-5, atol=1e-3)
