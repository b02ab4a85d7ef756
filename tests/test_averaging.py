"""Flow-averaged dynamics: systems against closed forms, the stationarity residual, likelihoods,
flows, the variational posterior and the reduced SDE. Bad inputs are listed at the end."""
import math

import pytest
import torch

from torchmf import systems
from torchmf.averaging import TestFunctions as PsiFamily
from torchmf.averaging import (FlowAveragedDrift, NeuralDrift, PathStatistics, em_negative_log_likelihood,
                               generator_applied, path_transitions, simulate_reduced)
from torchmf.variational import VariationalAveragedDrift


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: intra-op threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


# -- systems ------------------------------------------------------------------------------------------------
def test_cubic_averaged_drift_matches_monte_carlo_of_invariant_law():
    system = systems.get("fastslow_cubic", a=1.3, b=0.7, tau=0.9)
    x = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64).unsqueeze(-1)
    y = system.sample_invariant(x, 200000, torch.Generator().manual_seed(0))
    monte_carlo = system.slow_drift(x.unsqueeze(-2), y, system.true_theta).mean(-2)
    assert torch.allclose(monte_carlo, system.averaged_drift(x), atol=0.02)


def test_cubic_simulation_shapes_and_exact_fast_law():
    system = systems.get("fastslow_cubic", eps=0.005)
    data = system.simulate(n_experiments=3, t_end=20.0, seed=1, dtype=torch.float64, progress=False)
    assert data.positions.shape == (3, 2001, 1, 1) and data.extras["fast"].shape == (3, 2001, 1, 1)
    offset = (data.extras["fast"] - data.positions)[:, 100:].reshape(-1)
    # the exact OU step keeps Y - X ~ N(0, tau^2/2) (+ sigma^2 eps / 2 from the moving centre)
    expected = 0.5 + system.sigma**2 * system.eps / 2
    assert abs(float(offset.var()) - expected) < 0.03
    again = system.simulate(n_experiments=3, t_end=20.0, seed=1, dtype=torch.float64, progress=False)
    assert torch.equal(data.positions, again.positions)


def test_tilted_well_quadrature_against_samples_and_bimodality():
    system = systems.get("fastslow_tilted_well")
    x = torch.tensor([[-0.5], [0.0], [0.7]], dtype=torch.float64)
    samples = system.sample_invariant(x, 100000, torch.Generator().manual_seed(0))
    assert torch.allclose(samples.mean(-2), system.invariant_mean(x), atol=0.015)
    assert float(system.invariant_mean(x[1:2])) == pytest.approx(0.0, abs=1e-9)  # symmetric at x = 0
    grid, density = system.invariant_density(x[1:2])
    centre = density[0, grid.numel() // 2]
    assert float(density[0].max()) > 3 * float(centre)  # two modes, low density at y = 0
    assert float(torch.trapezoid(density[0], grid)) == pytest.approx(1.0, abs=1e-6)


def test_lorenz96_two_scale_runs_and_averages():
    system = systems.get("lorenz96_two_scale")
    data = system.simulate(t_end=0.2, seed=0, progress=False)
    assert data.positions.shape == (1, 21, 1, 4) and data.extras["fast"].shape == (1, 21, 1, 16)
    x = data.positions[0, -1, 0].unsqueeze(0).double()
    drift = system.averaged_drift(x, n_samples=20)
    frozen_zero_coupling = systems.get("lorenz96_two_scale", h_x=0.0).averaged_drift(x, n_samples=5)
    advection = -x.roll(1, -1) * (x.roll(2, -1) - x.roll(-1, -1)) - x + 8.0
    assert torch.allclose(frozen_zero_coupling, advection, atol=1e-9)
    assert torch.isfinite(drift).all() and not torch.allclose(drift, advection, atol=1e-3)


# -- stationarity residual (autograd generator) ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bumps", "fourier"])
def test_generator_residual_vanishes_for_true_invariant_law_only(kind):
    system = systems.get("fastslow_cubic")
    tests = PsiFamily(1, n_fourier=8, kind=kind).double()
    x = torch.tensor([[-1.0], [0.3], [1.2]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    true_samples = system.sample_invariant(x, 8000, generator)
    applied = generator_applied(system, tests, x, true_samples)
    too_wide = x.unsqueeze(1) + (true_samples - x.unsqueeze(1)) * math.sqrt(2.0)
    wrong = generator_applied(system, tests, x, too_wide)
    # residuals in units of their Monte-Carlo standard error (the y^3 term is large but noisy)
    def standardized(values):
        return values.mean(1) / (values.std(1) / math.sqrt(values.shape[1]) + 1e-12)
    assert standardized(applied).abs().max() < 4.5
    assert standardized(wrong).abs().max() > 5
    assert (standardized(wrong) ** 2).sum() > 3 * (standardized(applied) ** 2).sum()


def test_generator_autograd_matches_closed_form_for_square():
    # psi(y) = y^2: L psi = 2 y g(x, y) + tau^2 (the y^2 feature is column k of the family)
    system = systems.get("fastslow_cubic", tau=0.8)
    tests = PsiFamily(1, n_fourier=3, kind="fourier").double()
    x = torch.tensor([[0.5]], dtype=torch.float64)
    y = torch.linspace(-2, 2, 9, dtype=torch.float64).reshape(1, 9, 1)
    applied = generator_applied(system, tests, x, y)
    closed = 2 * y[..., 0] * (0.5 - y[..., 0]) + 0.8**2
    assert torch.allclose(applied[..., 1], closed, atol=1e-12)
    assert torch.allclose(applied[..., 0], (0.5 - y[..., 0]), atol=1e-12)


def test_em_likelihood_matches_gaussian_log_density():
    generator = torch.Generator().manual_seed(0)
    dx, drift = torch.randn(50, 2, generator=generator), torch.randn(50, 2, generator=generator)
    dt, sigma = torch.rand(50, generator=generator) + 0.01, torch.tensor([0.7, 1.3])
    ours = em_negative_log_likelihood(dx, dt, drift, drift, sigma)
    reference = -torch.distributions.Normal(drift * dt[:, None], sigma * dt[:, None].sqrt()).log_prob(dx).sum(-1)
    assert torch.allclose(ours, reference, atol=1e-5)


# -- models -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", ["flow", "gaussian"])
def test_flow_samples_are_reparameterized_and_seeded(density):
    model = FlowAveragedDrift("fastslow_tilted_well", density=density, n_samples=8)
    x = torch.randn(5, 1)
    y = model.sample_fast(x, 7, torch.Generator().manual_seed(3))
    assert y.shape == (5, 7, 1)
    assert torch.equal(y, model.sample_fast(x, 7, torch.Generator().manual_seed(3)))
    y.pow(2).sum().backward()
    # gradients reach the density's parameters through the samples (its output layers at least)
    assert sum(float(p.grad.abs().sum()) for p in model.density.parameters() if p.grad is not None) > 0
    log_density = model.density.log_prob(y[:, 0].detach(), x)
    assert log_density.shape == (5,) and torch.isfinite(log_density).all()


def test_dtype_follows_the_model_and_inputs():
    model = FlowAveragedDrift("fastslow_cubic", n_samples=8).double()
    drift = model.drift(torch.zeros(3, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert drift.dtype == torch.float64 and drift.shape == (3, 1)


def test_penalty_alone_teaches_the_flow_the_fast_law():
    torch.manual_seed(0)
    model = FlowAveragedDrift("fastslow_cubic", n_samples=32, hidden=16)
    model.data_range.copy_(torch.tensor([[-1.0], [1.0], [-1.0], [1.0]]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model.stationarity_penalty(model.penalty_points(32))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = torch.tensor([[-0.6], [0.0], [0.6]])
    with torch.no_grad():
        y = model.sample_fast(x, 20000, torch.Generator().manual_seed(0))
    assert (y.mean(1) - x).abs().max() < 0.15  # rho_x = N(x, 1/2)
    assert (y.var(1) - 0.5).abs().max() < 0.15


def test_variational_posterior_samples_density_and_elbo():
    model = VariationalAveragedDrift(system="fastslow_cubic", n_samples=8, n_parameter_samples=4)
    theta, log_sigma, log_q = model.sample_parameters(6, torch.Generator().manual_seed(0))
    assert theta.shape == (6, 2) and log_sigma.shape == (6, 1) and log_q.shape == (6,)
    values = torch.cat((theta, log_sigma), -1).detach()
    assert torch.allclose(model.posterior.log_prob(values), log_q.detach(), atol=1e-4)
    x, dx, dt = torch.randn(20, 1), 0.1 * torch.randn(20, 1), torch.full((20,), 0.01)
    loss = model.negative_elbo(x, dx, dt, n_transitions=1000)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.posterior.parameters() if p.ndim > 1)
    lower, median, upper = model.credible_band(x[:4], n_parameter_samples=50, n_samples=16)
    assert (lower <= median).all() and (median <= upper).all()


def test_reduced_sde_simulation_matches_ou_variance():
    class LinearDrift(NeuralDrift):
        def drift(self, x, **unused):
            return -2.0 * x

    model = LinearDrift(dim=1, sigma_init=1.0)
    x0 = torch.zeros(4000, 1)
    paths = simulate_reduced(model, x0, torch.tensor([0.0, 0.5, 2.0]), dt=0.01, seed=0)
    assert paths.positions.shape == (4000, 3, 1, 1)
    variance = paths.positions[:, -1, 0, 0].var()
    assert float(variance) == pytest.approx((1 - math.exp(-8.0)) / 4, rel=0.08)  # OU: sigma^2 (1 - e^{-2kt}) / 2k


def test_reduced_sde_runs_with_the_flow_model():
    model = FlowAveragedDrift("fastslow_cubic", n_samples=8)
    paths = simulate_reduced(model, torch.zeros(3, 1), torch.linspace(0, 0.2, 5), dt=0.05, seed=1, n_samples=16)
    again = simulate_reduced(model, torch.zeros(3, 1), torch.linspace(0, 0.2, 5), dt=0.05, seed=1, n_samples=16)
    assert paths.positions.shape == (3, 5, 1, 1) and torch.equal(paths.positions, again.positions)


# -- bad inputs ---------------------------------------------------------------------------------------------
# tried: NaN in a path, non-increasing times, an unknown system, an unknown density, a theta_init
# of the wrong length, n_samples < 2, a non-fast-slow system, a 1-D x0, a level outside (0, 1),
# a negative eps, two particles in a fast-slow simulation.
def test_bad_inputs_name_the_argument():
    positions = torch.zeros(5, 1)
    with pytest.raises(ValueError, match="positions"):
        path_transitions(torch.tensor([[0.0], [float("nan")], [1.0]]), torch.arange(3.0))
    with pytest.raises(ValueError, match="times"):
        path_transitions(positions, torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="system"):
        FlowAveragedDrift("no_such_system")
    with pytest.raises(ValueError, match="system"):
        FlowAveragedDrift("ou_linear")
    with pytest.raises(ValueError, match="density"):
        FlowAveragedDrift(density="mixture")
    with pytest.raises(ValueError, match="theta_init"):
        FlowAveragedDrift(theta_init=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="n_samples"):
        FlowAveragedDrift(n_samples=1)
    with pytest.raises(ValueError, match="x0"):
        simulate_reduced(NeuralDrift(), torch.zeros(3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="level"):
        VariationalAveragedDrift(n_samples=4).credible_band(torch.zeros(2, 1), level=1.5)
    with pytest.raises(ValueError, match="eps"):
        systems.get("fastslow_cubic", eps=-1.0)
    with pytest.raises(ValueError, match="n_particles"):
        systems.get("fastslow_cubic").simulate(n_particles=2, t_end=0.1, progress=False)
    with pytest.raises(ValueError, match="x"):
        PathStatistics(torch.zeros(5, 2), torch.zeros(5, 2), torch.full((5,), 0.1))
    with pytest.raises(ValueError, match="dt"):
        PathStatistics(torch.zeros(5, 1), torch.zeros(5, 1), torch.tensor([0.1, 0.1, 0.0, 0.1, 0.1]))
    with pytest.raises(ValueError, match="n_nodes"):
        PathStatistics(torch.zeros(5, 1), torch.zeros(5, 1), torch.full((5,), 0.1), n_nodes=1)
    with pytest.raises(ValueError, match="affine"):
        FlowAveragedDrift(flow_affine="spline")
    with pytest.raises(ValueError, match="degree"):
        PsiFamily(1, degree=0)
    from trainers.averaged import AveragedDynamicsModule
    with pytest.raises(ValueError, match="likelihood"):
        AveragedDynamicsModule(likelihood="batch")


def test_lorenz96_model_losses_are_finite_and_differentiable():
    model = FlowAveragedDrift("lorenz96_two_scale", layers=2, n_samples=4, theta_init=[6.0, 0.5])
    model.set_data_range(torch.randn(50, 4) * 3)
    x, dx, dt = 3 * torch.randn(8, 4), 0.1 * torch.randn(8, 4), torch.full((8,), 0.01)
    loss = model.path_nll(x, dx, dt) + model.stationarity_penalty(model.penalty_points(4))
    loss.backward()
    assert torch.isfinite(loss) and model.theta.grad is not None and torch.isfinite(model.theta.grad).all()
    assert model.sample_fast(x, 3).shape == (8, 3, 16)


# -- whole-path likelihood, flow structure, penalty weights ----------------------------------------------------
def test_path_statistics_equal_the_transition_sum_for_a_piecewise_linear_drift():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, generator=generator, dtype=torch.float64)
    dx = 0.1 * torch.randn(400, 1, generator=generator, dtype=torch.float64)
    dt = 0.01 + 0.01 * torch.rand(400, generator=generator, dtype=torch.float64)
    statistics = PathStatistics(x, dx, dt, n_nodes=17)
    nodes = statistics.nodes[:, 0]
    first, second = torch.randn(2, 17, 1, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.7], dtype=torch.float64)

    def interpolate(values):  # F linear between nodes, evaluated at every observed state
        index = torch.searchsorted(nodes, x[:, 0].contiguous(), right=True).clamp(1, 16) - 1
        weight = (x[:, 0] - nodes[index]) / (nodes[index + 1] - nodes[index])
        return ((1 - weight) * values[index, 0] + weight * values[index + 1, 0]).unsqueeze(-1)

    direct = em_negative_log_likelihood(dx, dt, interpolate(first), interpolate(second), sigma).mean()
    assert float(statistics.mean_nll(first, second, sigma)) == pytest.approx(float(direct), rel=1e-10)
    batched = statistics.mean_nll(torch.stack((first, second)), torch.stack((second, first)), sigma.expand(2, 1))
    assert batched.shape == (2,) and torch.allclose(batched[0], batched[1])


def test_flow_starts_as_a_centred_gaussian_and_per_context_sampling_matches_nflows():
    from torchmf.flows import conditional_spline_flow

    flow = conditional_spline_flow(1, 1, hidden=8, layers=2, scale=1.5)
    noise, context = torch.randn(4, 6, 1), torch.randn(4, 1)
    assert torch.allclose(flow.sample_from_noise(noise, context), 1.5 * noise, atol=1e-5)  # identity start
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    fast = flow.sample_from_noise(noise, context)
    repeated = context.unsqueeze(1).expand(4, 6, 1).reshape(24, 1)
    reference, _ = flow.flow._transform.inverse(noise.reshape(24, 1), context=repeated)
    assert torch.allclose(fast.reshape(24, 1), reference, atol=1e-5)
    made = conditional_spline_flow(1, 1, hidden=8, layers=1, affine="made")
    assert made.sample_from_noise(noise, context).shape == (4, 6, 1)


def test_normalised_penalty_weighs_each_moment_by_its_spread():
    torch.manual_seed(0)
    plain = FlowAveragedDrift("fastslow_cubic", n_samples=64, normalize_penalty=False)
    weighted = FlowAveragedDrift("fastslow_cubic", n_samples=64)
    weighted.load_state_dict(plain.state_dict())
    x = torch.linspace(-1.5, 1.5, 16).unsqueeze(-1)
    torch.manual_seed(1)
    raw = plain.stationarity_penalty(x)
    torch.manual_seed(1)
    applied = weighted._applied_test_functions(x)
    first, second = applied.chunk(2, dim=1)
    expected = (first.mean(1) * second.mean(1) / (applied.var(1).mean(0) + 1e-6)).sum(-1).mean()
    torch.manual_seed(1)
    assert float(weighted.stationarity_penalty(x)) == pytest.approx(float(expected), rel=1e-5)
    assert float(raw) != pytest.approx(float(expected), rel=1e-2)  # the weights change it


# -- the fast law fitted by reverse KL to the known fast log-density ------------------------------------------
@pytest.mark.parametrize("name", ["fastslow_cubic", "fastslow_tilted_well"])
def test_fast_log_density_is_the_invariant_law_up_to_a_constant(name):
    system = systems.get(name)
    x = torch.tensor([[-0.7], [0.3]], dtype=torch.float64)
    y = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64).reshape(1, -1, 1).expand(2, -1, -1)
    log_density = system.fast_log_density(x.unsqueeze(1), y)  # (2, 41)
    if name == "fastslow_cubic":  # N(x, tau^2 / 2)
        exact = -(y[..., 0] - x) ** 2 / system.tau**2
    else:  # quadrature density on its grid, interpolated at the grid points nearest to y
        grid, values = system.invariant_density(x)
        index = torch.searchsorted(grid, y[0, :, 0])
        exact = torch.log(values[:, index]) + 0 * y[..., 0]
        log_density = system.fast_log_density(x.unsqueeze(1), grid[index].reshape(1, -1, 1).expand(2, -1, -1))
    difference = log_density - exact
    assert torch.allclose(difference, difference[:, :1].expand_as(difference), atol=1e-6)
    # the fast drift is the score: g = tau^2 / 2 * d/dy log rho_x
    y = y.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(system.fast_log_density(x.unsqueeze(1), y).sum(), y)
    assert torch.allclose(system.tau**2 / 2 * score, system.fast_drift(x.unsqueeze(1), y.detach()), atol=1e-9)


def test_reverse_kl_gaussian_closure_reaches_the_cubic_fast_law():
    from torchmf.averaging import fit_fast_law

    model = FlowAveragedDrift("fastslow_cubic", density="gaussian", hidden=16, n_samples=16)
    model.data_range.copy_(torch.tensor([[-1.0], [1.0], [-1.0], [1.0]]))
    x = torch.tensor([[-0.6], [0.0], [0.6]])
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(model.fast_law_divergence(x, 256))
    last = fit_fast_law(model, 200, n_points=32, learning_rate=1e-2, temperature=2.0)
    assert model.penalty_temperature == 1.0 and math.isfinite(last)
    with torch.no_grad():
        # the divergence drops towards -log Z (up to the normalizer); the law itself is checked below
        assert float(model.fast_law_divergence(x, 256)) < before - 0.1
        y = model.sample_fast(x, 20000, torch.Generator().manual_seed(0))
    assert (y.mean(1) - x).abs().max() < 0.1  # rho_x = N(x, 1/2): the KL minimum of a Gaussian family
    assert (y.var(1) - 0.5).abs().max() < 0.1


def test_fast_law_fit_arguments_are_checked():
    from torchmf.averaging import fit_fast_law

    model = FlowAveragedDrift("fastslow_cubic", density="gaussian", hidden=8, n_samples=4)
    with pytest.raises(ValueError, match="steps"):
        fit_fast_law(model, 0)
    with pytest.raises(ValueError, match="temperature"):
        fit_fast_law(model, 1, temperature=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        fit_fast_law(model, 1, learning_rate=0.0)


# -- calibrated uncertainty (issue 14) ------------------------------------------------------------------------
def _exact_fast_law_posterior(posterior_init_std=0.1, theta=(1.0, 1.0), sigma=1.0):
    """A variational cubic model whose q_phi is exactly rho_x = N(x, 1/2) (the flow's affine layer set,
    its spline layers the identity at start) and whose posterior is N(theta, std^2) per parameter."""
    model = VariationalAveragedDrift(system="fastslow_cubic", n_samples=16, theta_init=list(theta), sigma_init=sigma,
                                     posterior_init_std=posterior_init_std)
    affine = model.model.density.flow._transform._transforms[0]
    with torch.no_grad():
        affine.linear.weight.copy_(torch.tensor([[1.0], [0.0]]))
        affine.linear.bias.copy_(torch.tensor([0.0, 0.5 * math.log(0.5)]))
    return model.eval()


def _exact_band(model, x, n_parameter_samples, seed, level=0.9):
    """The band with E_q in closed form (E[y^3] = x^3 + 1.5 x for N(x, 1/2)) and the same posterior draws."""
    theta, _, _ = model.sample_parameters(n_parameter_samples, torch.Generator().manual_seed(seed))
    exact = theta[:, None, 0:1] * x - theta[:, None, 1:2] * (x**3 + 1.5 * x)  # (T, B, 1)
    tail = (1 - level) / 2
    return torch.quantile(exact, torch.tensor([tail, 0.5, 1 - tail]), dim=0)


def test_credible_band_matches_the_exact_band_and_the_old_plain_sampling_did_not():
    model = _exact_fast_law_posterior()
    x = torch.linspace(-1.3, 1.3, 40).unsqueeze(-1)  # even: x = 0, where every draw gives F = 0, left out
    with torch.no_grad():
        exact = _exact_band(model, x, 400, seed=3)
        band = torch.stack(model.credible_band(x, n_parameter_samples=400, generator=torch.Generator().manual_seed(3)))
        # the previous estimate: one plain (unstratified) set of 512 draws shared by every theta
        generator = torch.Generator().manual_seed(3)
        theta, _, _ = model.sample_parameters(400, generator)
        values = model.model.drift_samples(x, model.sample_fast(x, 512, generator), theta).mean(-2)
        plain = torch.quantile(values, torch.tensor([0.05, 0.5, 0.95]), dim=0)
    width = exact[2] - exact[0]  # F(0) = 0 for every theta: the band pinches to nothing at x = 0
    assert float(((band - exact).abs() - 0.05 * width).max()) < 1e-3
    assert float(((plain - exact).abs() - 0.3 * width).max()) > 0  # the defect this replaces
    inside = ((exact[1] >= band[0]) & (exact[1] <= band[2])).double().mean()
    assert float(inside) == 1.0


def test_fluctuation_variance_matches_the_hermite_closed_form_for_the_cubic():
    system = systems.get("fastslow_cubic", tau=1.0, eps=0.004)
    x = torch.tensor([[-1.2], [0.0], [0.7]], dtype=torch.float64)
    theta = torch.tensor([[1.0, 1.0], [0.3, 2.0]], dtype=torch.float64)
    # y^3 - E y^3 = c1 H1 + c2 H2 + c3 H3 in z = (y - x)/s, s^2 = 1/2; an OU mode H_n decorrelates at rate n,
    # so 2 int Cov = 2 b^2 sum_n c_n^2 n! / n
    s = math.sqrt(0.5)
    c1, c2, c3 = 3 * x**2 * s + 3 * s**3, 3 * x * s**2, s**3
    expected = 2 * system.eps * theta[:, 1:2, None] ** 2 * (c1**2 + c2**2 + 2 * c3**2)
    assert torch.allclose(system.fluctuation_variance(x, theta), expected, rtol=1e-3)


def test_corrected_sigma_recovers_the_true_slow_noise_where_the_euler_estimate_does_not():
    system = systems.get("fastslow_cubic")
    data = system.simulate(t_end=100.0, n_experiments=20, seed=3, dtype=torch.float64, progress=False)
    path = data.positions[:, :, 0, :]  # (M, L, 1)
    x, dx, step = path[:, :-1].reshape(-1, 1), path.diff(dim=1).reshape(-1, 1), 0.01
    drift = system.averaged_drift(x)
    effective = float(((dx - drift * step) ** 2 / step).mean().sqrt())  # the EM estimate with the true drift
    model = _exact_fast_law_posterior(posterior_init_std=1e-4, sigma=effective)
    model.set_data_range(x.float())
    model.set_observation_step(step)
    with torch.no_grad():
        lower, upper = model.credible_intervals(0.9, n_parameter_samples=200, generator=torch.Generator().manual_seed(0))
    corrected = float(lower[2].exp())
    assert effective > 1.015 * system.sigma  # 200,000 transitions: the bias is ~15 standard errors
    assert abs(corrected - system.sigma) < 0.005 * system.sigma


@pytest.mark.parametrize("d", [1, 2])
def test_tagged_particle_averaged_drift_fast_law_and_exact_fast_step(d):
    system = systems.get("tagged_particle", d=d, n_solvent=5, scale=1000.0)
    x = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = system.sample_invariant(x, 100000, torch.Generator().manual_seed(1))  # (4, S, 5 d)
    monte_carlo = system.slow_drift(x.unsqueeze(-2), y, system.true_theta).mean(-2)
    assert torch.allclose(monte_carlo, system.averaged_drift(x), atol=0.01)
    features = system.drift_features(x.unsqueeze(-2), y)  # linear in theta: f = Phi theta
    assert torch.allclose(features @ system.true_theta, system.slow_drift(x.unsqueeze(-2), y, system.true_theta))
    # rho_x is stationary for the fast generator (E[g] = 0) and for the exact OU step
    assert float(system.fast_drift(x.unsqueeze(-2), y).mean(-2).abs().max()) < 0.03
    stepped = system.fast_step(x.unsqueeze(-2), y, 2e-4, torch.randn(y.shape, dtype=y.dtype,
                                                                     generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(stepped.var(-2), y.var(-2), rtol=0.03)
    # fast_log_density is the same Gaussian law up to a constant: its score is -(y - mean) / variance
    point = y[:, :3].clone().requires_grad_(True)
    score = torch.autograd.grad(system.fast_log_density(x.unsqueeze(-2), point).sum(), point)[0]
    assert torch.allclose(score, 2 * system.fast_drift(x.unsqueeze(-2), point.detach()) / system.tau**2)


def test_draws_without_an_admissible_corrected_sigma_are_dropped_and_counted():
    model = VariationalAveragedDrift(system="fastslow_cubic", n_samples=16, theta_init=[1.0, 1.0], sigma_init=0.33,
                                     posterior_init_std=0.2)
    model.set_data_range(0.6 * torch.randn(5000, 1, generator=torch.Generator().manual_seed(0)))
    model.set_observation_step(0.01)
    with pytest.warns(UserWarning, match="dropped 2 of 400"):
        theta, log_sigma = model.posterior_samples(400, torch.Generator().manual_seed(0))
    assert theta.shape == (398, 2) and model.rejected_draws == 2 and bool(torch.isfinite(log_sigma).all())
    narrow = VariationalAveragedDrift(system="fastslow_cubic", n_samples=16, sigma_init=0.1)  # noise << fluctuations
    narrow.set_data_range(0.6 * torch.randn(5000, 1, generator=torch.Generator().manual_seed(0)))
    narrow.set_observation_step(0.01)
    with pytest.raises(ValueError, match="theta: .* posterior draws"):
        narrow.posterior_samples(100, torch.Generator().manual_seed(0))
