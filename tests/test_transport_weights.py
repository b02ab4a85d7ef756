"""Transport between weighted clouds of unequal sizes, and LOT on frames with lost particles.

References: the 1-D quantile-function map integrated on a fine grid (numpy), POT's plan computed
here, the Gaussian-to-Gaussian affine closed form, the exact weighted map for the Sinkhorn
backends, and a known gradient flow for LOT. Each check has a baseline (weights dropped, standing
still, missing entries filled) that must fail the same tolerance.
"""
import math

import numpy as np
import pytest
import torch

from torchmf import Trajectories
from torchmf.lot import extrapolate, lot_velocity
from torchmf.transport import TransportSolver, transport_map

pytestmark = pytest.mark.usefixtures("one_thread")


def relative(mapped, reference, source):
    return float((mapped - reference).norm() / (reference - source).norm())


def quantile_map(x, a, y, b, resolution=2_000_000):
    """(1/a_i) * integral of F_b^{-1} over the source's quantile interval, on a midpoint grid (numpy)."""
    x, a, y, b = (np.asarray(v, dtype=np.float64).ravel() for v in (x, a, y, b))
    order_x, order_y = np.argsort(x), np.argsort(y)
    upper_a = np.cumsum(a[order_x]) / a.sum()
    upper_b = np.cumsum(b[order_y]) / b.sum()
    t = (np.arange(resolution) + 0.5) / resolution
    source = np.minimum(np.searchsorted(upper_a, t), x.size - 1)
    quantile = y[order_y][np.minimum(np.searchsorted(upper_b, t), y.size - 1)]
    mapped = np.bincount(source, weights=quantile, minlength=x.size) / np.bincount(source, minlength=x.size)
    out = np.empty_like(mapped)
    out[order_x] = mapped
    return out


def test_weighted_1d_maps_are_the_quantile_function_map():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, generator=generator, dtype=torch.float64)
    y = 2 * torch.rand(310, 1, generator=generator, dtype=torch.float64) - 0.5
    a = 0.2 + torch.rand(200, generator=generator, dtype=torch.float64)
    b = torch.rand(310, generator=generator, dtype=torch.float64)
    b[::7] = 0.0  # massless targets are ignored
    reference = torch.from_numpy(quantile_map(x, a, y, b)).unsqueeze(1)
    scale = float(reference.std())
    for method in ("sort", "exact", "auto"):
        mapped = transport_map(x, y, method, source_weights=3.0 * a, target_weights=b)  # not normalised: fine
        # grid error of the reference: a quantile interval of width 1/2e6 misplaced per source
        assert float((mapped - reference).abs().max()) < 1e-4 * scale, method
    unweighted = transport_map(x, y, "sort")  # baseline: the weights dropped (and N != M)
    assert float((unweighted - reference).abs().max()) > 100 * 1e-4 * scale


def test_exact_unequal_sizes_match_an_independent_pot_plan():
    import ot

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 150, 2, generator=generator, dtype=torch.float64)
    y = torch.rand(2, 230, 2, generator=generator, dtype=torch.float64) * 3
    a = torch.rand(2, 150, generator=generator, dtype=torch.float64) + 0.1
    b = torch.rand(230, generator=generator, dtype=torch.float64) + 0.1  # one row shared by the batch
    mapped = transport_map(x, y, "exact", source_weights=a, target_weights=b)
    for index in range(2):
        weights_a = (a[index] / a[index].sum()).numpy()
        weights_b = (b / b.sum()).numpy()
        plan = ot.emd(weights_a, weights_b, ot.dist(x[index].numpy(), y[index].numpy()))
        assert np.allclose(plan.sum(1), weights_a, atol=1e-12) and np.allclose(plan.sum(0), weights_b, atol=1e-12)
        assert (plan > 1e-15).sum() > 150  # mass is split: no longer a permutation
        expected = torch.from_numpy(plan @ y[index].numpy() / weights_a[:, None])
        assert torch.allclose(mapped[index], expected, atol=1e-10)
    # uniform clouds of unequal sizes: the same with a = 1/N, b = 1/M
    uniform = transport_map(x[0], y[0], "exact")
    plan = ot.emd(np.full(150, 1 / 150), np.full(230, 1 / 230), ot.dist(x[0].numpy(), y[0].numpy()))
    assert torch.allclose(uniform, torch.from_numpy(150 * plan @ y[0].numpy()), atol=1e-10)
    # baseline: the map without the weights is another map
    assert relative(transport_map(x[0], y[0], "exact"), mapped[0], x[0]) > 0.05


def gaussian_pair(seed, n_source, n_target, proposal=1.0):
    """x ~ N(m1, proposal * S1) (importance weights to N(m1, S1) when proposal > 1), y ~ N(m2, S2),
    and the closed-form Brenier map m2 + A (x - m1) of N(m1, S1) -> N(m2, S2) at x."""
    def root(matrix):
        values, vectors = torch.linalg.eigh(matrix)
        return vectors @ torch.diag(values.sqrt()) @ vectors.T

    generator = torch.Generator().manual_seed(seed)
    m1, m2 = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    s1 = torch.tensor([[1.0, 0.3], [0.3, 0.6]], dtype=torch.float64)
    s2 = torch.tensor([[2.0, -0.4], [-0.4, 1.2]], dtype=torch.float64)
    r1, r1_inverse = root(s1), torch.linalg.inv(root(s1))
    affine = r1_inverse @ root(r1 @ s2 @ r1) @ r1_inverse
    x = math.sqrt(proposal) * torch.randn(n_source, 2, generator=generator, dtype=torch.float64) @ r1.T + m1
    y = torch.randn(n_target, 2, generator=generator, dtype=torch.float64) @ root(s2).T + m2
    mahalanobis = ((x - m1) @ torch.linalg.inv(s1) * (x - m1)).sum(1)
    weights = torch.exp(-0.5 * (1 - 1 / proposal) * mahalanobis)  # p / q up to a constant
    return x, y, m2 + (x - m1) @ affine.T, weights


def test_gaussian_affine_map_with_unequal_sizes_and_importance_weights():
    x, y, closed, _ = gaussian_pair(0, 1200, 2000)
    mapped = transport_map(x, y, "exact")
    # sampling noise of 1,200 / 2,000 points (measured 0.076-0.092 over seeds 0-2)
    assert relative(mapped, closed, x) < 0.12
    assert relative(x, closed, x) > 0.12                        # standing still: 1.0
    assert relative(x + closed.mean(0) - x.mean(0), closed, x) > 0.12  # translation only: 0.34
    # a wide proposal N(m1, 2 S1) weighted by p/q represents N(m1, S1): the map is the same closed form
    x, y, closed, weights = gaussian_pair(0, 1200, 2000, proposal=2.0)

    def weighted_error(candidate):  # the L2(mu) norm: the particles weighted like the measure
        return float(((weights[:, None] * (candidate - closed) ** 2).sum() /
                      (weights[:, None] * (closed - x) ** 2).sum()).sqrt())

    weighted = transport_map(x, y, "exact", source_weights=weights)
    assert weighted_error(weighted) < 0.13                      # measured 0.08-0.10 over seeds 0-2
    assert weighted_error(transport_map(x, y, "exact")) > 0.13  # weights dropped: 0.27-0.28


def test_converged_sinkhorn_weighted_map_approaches_the_exact_weighted_map():
    # a non-affine pair (Gaussian to a bent cloud), smooth source weights, noisy target weights, N != M
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(600, 2, generator=generator, dtype=torch.float64)
    u = 0.6 * torch.randn(900, 2, generator=generator, dtype=torch.float64)
    y = torch.stack([u[:, 0] + 2, u[:, 1] + 0.6 * u[:, 0] ** 2 - 1], 1)
    a = torch.exp(-0.5 * (x[:, 0] - 0.5) ** 2)
    b = 0.5 + torch.rand(900, generator=generator, dtype=torch.float64)
    exact = transport_map(x, y, "exact", source_weights=a, target_weights=b)
    errors = {}
    for method in ("sinkhorn-online", "sinkhorn-multiscale"):
        for blur in (0.1, 0.05):
            solver = TransportSolver(method, blur=blur, on_unconverged="raise")
            errors[method, blur] = relative(solver(x, y, source_weights=a, target_weights=b), exact, x)
            assert solver.last_report.converged
    # measured 0.024 at blur 0.1 and 0.015 at 0.05 for both backends: the entropic bias shrinks with the blur
    assert all(errors[method, 0.05] < 0.025 for method in ("sinkhorn-online", "sinkhorn-multiscale")), errors
    assert all(errors[method, 0.05] < errors[method, 0.1] for method in ("sinkhorn-online", "sinkhorn-multiscale"))
    unweighted = transport_map(x, y, "sinkhorn-multiscale", blur=0.05)
    assert relative(unweighted, exact, x) > 0.1  # weights dropped: 0.15


def test_explicit_uniform_weights_give_the_unweighted_map():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(300, 2, generator=generator, dtype=torch.float64) * 0.7 + 1
    ones = torch.ones(300, dtype=torch.float64)
    for method in ("exact", "sinkhorn-online", "sinkhorn-multiscale"):
        plain = transport_map(x, y, method, blur=0.1)
        weighted = transport_map(x, y, method, blur=0.1, source_weights=ones, target_weights=2 * ones)
        assert torch.allclose(plain, weighted, atol=1e-6), method
    x1, y1 = x[:, :1], y[:, :1]
    assert torch.allclose(transport_map(x1, y1, "sort"), transport_map(x1, y1, "sort", source_weights=ones), atol=1e-12)


def test_geomloss_backend_takes_weights():
    pytest.importorskip("geomloss")
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(260, 2, generator=generator, dtype=torch.float64) + 1
    b = torch.rand(260, generator=generator, dtype=torch.float64)
    plain = transport_map(x, y[:200], "sinkhorn-geomloss", blur=0.1)
    same = transport_map(x, y[:200], "sinkhorn-geomloss", blur=0.1, source_weights=torch.ones(200, dtype=torch.float64))
    assert torch.allclose(plain, same, atol=1e-6)
    weighted = transport_map(x, y, "sinkhorn-geomloss", blur=0.1, target_weights=b)
    # the weighted mean target moves with the weights: the maps' mean is b's barycentre
    centre = (b[:, None] * y).sum(0) / b.sum()
    assert float((weighted.mean(0) - centre).norm()) < 0.05 * float(centre.norm())


@pytest.mark.parametrize("weights, kind, match", [
    (-torch.ones(10), ValueError, "nonnegative"),
    (torch.full((10,), float("nan")), ValueError, "finite"),
    (torch.ones(9), ValueError, r"shape \(10,\)"),
    (torch.zeros(10), ValueError, "positive total"),
    (torch.ones(10, dtype=torch.bool), TypeError, "real numbers"),
    ("heavy", TypeError, "expected a tensor"),
])
def test_bad_weights_name_the_argument(weights, kind, match):
    x = torch.randn(10, 2, dtype=torch.float64)
    for name in ("source_weights", "target_weights"):
        with pytest.raises(kind, match=f"{name}: .*{match}"):
            transport_map(x, x + 1, "exact", **{name: weights})


def test_a_massless_source_is_refused_and_a_massless_target_ignored():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(30, 2, generator=generator, dtype=torch.float64)
    a = torch.ones(20, dtype=torch.float64)
    a[3] = 0.0
    with pytest.raises(ValueError, match=r"source_weights: expected positive weights .* 1 particles have weight 0"):
        transport_map(x, y, "exact", source_weights=a)
    b = torch.ones(30, dtype=torch.float64)
    b[5:10] = 0.0
    kept = torch.cat([y[:5], y[10:]])
    for method in ("exact", "sinkhorn-multiscale"):
        assert torch.allclose(transport_map(x, y, method, blur=0.2, target_weights=b),
                              transport_map(x, kept, method, blur=0.2), atol=1e-10), method


# -- LOT on frames with lost particles ------------------------------------------------------------
def gradient_field(x):
    """-grad V for V = (x1^2 + 2 x2^2) / 2 + 0.1 x1^4."""
    return -torch.stack([x[:, 0] + 0.4 * x[:, 0] ** 3, 2 * x[:, 1]], 1)


def flow(x, time, steps=100):
    step = time / steps
    for _ in range(steps):  # RK4: the snapshots are exact to ~1e-9
        k1 = gradient_field(x)
        k2 = gradient_field(x + step / 2 * k1)
        k3 = gradient_field(x + step / 2 * k2)
        k4 = gradient_field(x + step * k3)
        x = x + step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def masked_frames(n=1000, dt=0.1, count=5, lost=0.05, seed=0):
    """Untracked snapshots (shuffled every frame) of a gradient flow, and a mask losing ``lost`` of the entries."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    frames = torch.stack([flow(start, 0.1 + j * dt)[torch.randperm(n, generator=generator)] for j in range(count)])
    mask = torch.rand(frames.shape[:2], generator=generator) >= lost
    return start, frames, mask


def test_lot_velocity_on_masked_frames_matches_the_gradient_field():
    _, frames, mask = masked_frames()
    counts = mask.sum(1)
    assert len(set(counts.tolist())) > 1  # the frames hold different numbers of particles
    full = lot_velocity(frames, 0.1, method="exact")
    masked = lot_velocity(frames.masked_fill(~mask[..., None], float("nan")), 0.1, mask=mask, method="exact")
    assert masked.shape == (int(counts[2]), 2)
    centre = frames[2][mask[2]]
    true = gradient_field(centre)

    def error(velocity):
        return float((velocity - true).norm() / true.norm())

    # full data: 0.031 (the O(dt^2) of the centred differences); masked: 0.093-0.119 over seeds 0-4,
    # set by the 5% of mass that differs between frames (the particle spacing over 2 k dt)
    assert float((full - gradient_field(frames[2])).norm() / gradient_field(frames[2]).norm()) < 0.05
    assert error(masked) < 0.15
    assert float((masked - full[mask[2]]).norm() / full[mask[2]].norm()) < 0.15
    # baselines: standing still (1.0); the missing entries filled and the weights dropped (0.19-0.42)
    assert error(torch.zeros_like(true)) > 0.15
    data = Trajectories.from_arrays(frames.masked_fill(~mask[..., None], float("nan")), torch.arange(5) * 0.1)
    filled = lot_velocity(data.filled_positions()[0], 0.1, method="exact")[mask[2]]
    assert error(filled) > 0.15
    # a sequence of clouds of different sizes is the same input as the mask
    clouds = [frame[observed] for frame, observed in zip(frames, mask)]
    assert torch.equal(lot_velocity(clouds, 0.1, method="exact"), masked)


def exact_w2(x, y):
    """W2 between uniform clouds of any sizes, from POT's exact plan."""
    import ot

    cost = ot.dist(x.numpy(), y.numpy())
    return math.sqrt(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost))


def test_extrapolate_masked_trajectories_forecasts_the_flow():
    # x(t) = exp(-0.3 t) y + u t, shuffled every frame, 5% of the entries lost
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(600, 2, generator=generator, dtype=torch.float64)
    drift = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def cloud(time):
        return math.exp(-0.3 * time) * start + drift * time

    frames = torch.stack([cloud(0.1 * i)[torch.randperm(600, generator=generator)] for i in range(5)])
    mask = torch.rand(frames.shape[:2], generator=generator) >= 0.05
    data = Trajectories.from_arrays(frames.masked_fill(~mask[..., None], float("nan")),
                                    torch.arange(5, dtype=torch.float64) * 0.1)
    assert data.mask is not None
    forecast = extrapolate(data, horizon=0.5, k=2, method="exact")
    assert forecast.shape == (int(mask[2].sum()), 2)  # the central frame's observed particles, moved
    truth = cloud(0.9)
    complete = extrapolate(Trajectories(frames, data.times), horizon=0.5, k=2, method="exact")
    moved, full, still = (exact_w2(c, truth) for c in (forecast, complete, frames[-1][mask[-1]]))
    # measured over seeds 1-3: masked 0.12-0.14, complete 0.027, standing still at the last frame 0.57-0.61
    assert full < 0.05
    assert moved < 0.2
    assert still > 0.2


def test_masked_windows_refuse_what_has_no_meaning():
    _, frames, mask = masked_frames(n=50)
    clouds = [frame[observed] for frame, observed in zip(frames, mask)]
    with pytest.raises(ValueError, match="mask: .*got both"):
        lot_velocity(clouds, 0.1, mask=mask)
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor of shape \(5, 50\)"):
        lot_velocity(frames, 0.1, mask=mask[:, :10])
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"snapshots\[1\]"):
        lot_velocity(frames, 0.1, mask=empty)
    with pytest.raises(ValueError, match="snapshots"):  # NaN entries without a mask are not silently used
        lot_velocity(frames.masked_fill(~mask[..., None], float("nan")), 0.1)


class LosingSimulator:
    """A micro-simulator whose particle set shrinks: x' = 1, one particle lost per step."""

    def __init__(self, n=30, dt=0.1):
        self.dt, self.state = dt, torch.linspace(0, 1, n, dtype=torch.float64).unsqueeze(1)

    def step(self, n):
        for _ in range(n):
            self.state = self.state[1:] + self.dt

    def positions(self):
        return self.state

    def set_positions(self, positions):
        self.state = positions.clone()


def test_projective_integrator_refuses_a_changing_particle_set():
    from torchmf.lot import ProjectiveIntegrator

    integrator = ProjectiveIntegrator(k=1, step=0.3, burn_in=0.1, start_up=0.1, n_steps=1, recovery=0.1,
                                      method="sort", progress=False)
    with pytest.raises(ValueError, match="simulator: positions\\(\\) changed shape within a window"):
        integrator.run(LosingSimulator())


def _student_t_and_pentagon(n, m, generator):
    """Student-t (3 degrees of freedom) ``(n, 2)`` and a uniform filled regular pentagon ``(m, 2)``."""
    chi2 = torch.randn(n, 3, generator=generator, dtype=torch.float64).pow(2).sum(1, keepdim=True)  # 3 dof
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64) / (chi2 / 3.0).sqrt()
    angles = torch.arange(6, dtype=torch.float64) * 2 * math.pi / 5
    corners = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    sector = torch.randint(0, 5, (m,), generator=generator)
    u = torch.rand(m, generator=generator, dtype=torch.float64)
    v = torch.rand(m, generator=generator, dtype=torch.float64)
    outside = u + v > 1
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    y = u[:, None] * corners[sector] + v[:, None] * corners[sector + 1] + torch.tensor([4.0, 0.0], dtype=torch.float64)
    return x, y


def test_weighted_sinkhorn_student_t_to_pentagon_stops_converged():
    """Issue 26: weighted "sinkhorn" from a Student-t cloud to a pentagon was reported to stop
    unconverged (0.034 from exact at 1,500 -> 2,000). Measured there: the default map is 7e-5 (rms)
    from a solve run to tolerance 1e-6, both 0.0338 from the exact map: the entropic bias of the
    default blur, not the stopping rule. Checked here at 600 -> 800 against the same long solve,
    with a solve stopped after 3 iterations as the baseline that must fail."""
    x, y = _student_t_and_pentagon(600, 800, torch.Generator().manual_seed(11))
    weights = torch.Generator().manual_seed(12)
    a = 0.5 + torch.rand(600, generator=weights, dtype=torch.float64)
    b = 0.5 + torch.rand(800, generator=weights, dtype=torch.float64)
    default = TransportSolver("sinkhorn", on_unconverged="raise")
    mapped = default(x, y, source_weights=a, target_weights=b)
    assert default.last_report.converged
    long = transport_map(x, y, "sinkhorn", tolerance=1e-6, max_iterations=20_000, source_weights=a,
                         target_weights=b)
    stopped = transport_map(x, y, "sinkhorn", max_iterations=3, on_unconverged="ignore", source_weights=a,
                            target_weights=b)
    assert relative(mapped, long, x) < 2e-3, relative(mapped, long, x)
    assert relative(stopped, long, x) > 2e-3, relative(stopped, long, x)  # baseline: stopped early
