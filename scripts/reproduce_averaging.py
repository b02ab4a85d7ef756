"""Flow-averaged dynamics: learned vs true averaged drift, fast law vs truth, posterior coverage, held-out scores.

    python scripts/reproduce_averaging.py [--out runs] [--quick] [--sections cubic,tilted,coverage,tagged]

Every check carries a trivial baseline computed in the same run that must fail its target (issue 14):

  * fastslow_cubic (default recipe: theta, sigma and the fast law q_phi learned from the slow path,
    penalized likelihood): relative L2 error of F against the true averaged drift on the 5-95% range
    of the training path, and on the states of the held-out end of the path; baseline: the better of
    the untrained guess F = -x and the best line F = c0 + c1 x fitted to the same transitions; W1
    between the held-out states and each learned SDE's long-run law in metrics;
  * fastslow_tilted_well, both ways: q_phi learned from the path (penalized likelihood, the method's
    premise, the default) and q_phi fitted to the known fast density (an option, named as such);
    flow against the Gaussian closure in drift error and in W1 to the true rho_x;
  * variational posterior over (a, b, sigma): 90% intervals containing the truth over independent
    datasets, per parameter with its Clopper-Pearson interval; sigma corrected for the fast
    fluctuations and the Euler step (torchmf.variational); baselines: the untrained posterior for
    a and b, the uncorrected Euler-Maruyama sigma for sigma; credible-band coverage of the true F;
  * the paper's tagged-particle benchmark (torchmf.systems.tagged_particle, N = 10 solvent particles
    by default, --tagged-solvent 10,15,20 for the paper's other sizes, d = 1, 2): drift MSE of the
    structured flow-averaged model over the unstructured MLP drift at the larger scale separations
    n = 1000, 15000 (n = 100 reported); baseline: the best linear drift.
Writes OUT/reproduce_averaging.json and averaging_*.png beside it.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import Report, standard_parser  # noqa: E402

import torch  # noqa: E402

SIZES = {  # full / quick
    # quick: a path of T = 1000 simulated here; training cost does not grow with T (path statistics)
    "cubic_path": ("datasets/fastslow_cubic.yaml", 1000.0),
    "cubic_steps": (1000, 400),
    # full: a long path near the averaging limit. With eps = 1e-2 the fast law lags x (theta fitted
    # with the exact rho_x comes out ~0.81 instead of 1), and on a path of T = 400 the statistical
    # error of theta alone (~12%) is as large as the Gaussian closure's structural error (~14%)
    "tilted_t_end": (2500.0, 40.0),
    "tilted_eps": (2e-3, 1e-2),
    "tilted_micro_dt": (2e-4, 5e-4),
    "tilted_steps": (600, 150),
    "tilted_fast_law_steps": (1500, 300),
    "coverage_datasets": (20, 6),
    "coverage_t_end": (100.0, 100.0),
    "coverage_steps": (300, 200),
    "penalty_pretrain_steps": (1000, 300),
    "neural_steps": (800, 200),
}
# the tilted well's two recipes. "learned": q_phi from the path by penalized likelihood (bump test
# functions, which see where the mass of a bimodal law sits; the penalty tempered from 3 tau^2 down
# to tau^2 over the first half so that q starts broad over both wells). "known density": q_phi
# fitted first to the system's known fast law by reverse KL and frozen (an option, not the method's
# premise; jointly trained, the likelihood once pulled (theta, q) into the mirrored basin b < 0)
TILTED_TRAINING = {
    "learned from the path": dict(bins=16, n_samples=64, test_kind="bumps", penalty_weight=100.0,
                                  anneal_temperature=3.0, anneal_fraction=0.5),
    "known fast density": dict(bins=16, n_samples=64, fast_law_temperature=3.0),
}
# quick: T = 1000 (800 trained; the statistical floor, theta fitted with the exact fast law, is in
# metrics: exact_law_fit). T = 400 was too short: its floor was 14% and the trained flow (21.6%)
# no better than the untrained guess F = -x (21.2%)
CUBIC_TARGET = (0.05, 0.15)
COVERAGE_NEEDED = 16  # of 20 (full); quick pools (a, b, sigma) over 6 datasets: >= 14 of 18


def size(name, quick):
    return SIZES[name][1 if quick else 0]


def clopper_pearson(successes: int, trials: int, level: float = 0.9):
    """Exact binomial ``level`` interval of a proportion."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    lower = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return [lower, upper]


def linear_drift_fit(x, dx, dt):
    """Euler-Maruyama MLE of the trivial drift ``F = c0 + c1 x`` (one slow dimension): ``(c0, c1)``."""
    design = torch.cat((torch.ones_like(x), x), dim=-1).double() * dt.double().sqrt().unsqueeze(-1)
    target = (dx.double() / dt.double().sqrt().unsqueeze(-1))
    return torch.linalg.lstsq(design, target).solution[:, 0]


def relative_l2(estimate, truth):
    return float((estimate.double() - truth.double()).norm() / truth.double().norm())


def train_point(recipe=None, path=None, steps=1000, seed=0, batch_size=512, freeze_theta=False, **model):
    """Train an AveragedDynamicsModule (``freeze_theta``: theta stays at ``theta_init``, the slow drift's
    form and constants known); returns (model, datamodule, seconds)."""
    from trainers.averaged import AveragedDynamicsModule, fit_quietly
    from trainers.slow_path_data import SlowPathDataModule

    data = SlowPathDataModule(recipe=recipe or "datasets/fastslow_cubic.yaml", path=path, batch_size=batch_size,
                              progress=False)
    data.prepare_data()  # simulate and cache before the clock starts
    module = AveragedDynamicsModule(seed=seed, **model)
    if freeze_theta:
        module.model.theta.requires_grad_(False)
    start = time.perf_counter()
    fit_quietly(module, data, steps, seed=seed)
    return module.model.eval(), data, time.perf_counter() - start


def validation_nll(model, data):
    data.setup("validate")
    x, dx, dt = data.validation_set.tensors
    with torch.no_grad():
        return float(model.path_nll(x, dx, dt))


def true_nll(system, data):
    from torchmf.averaging import em_negative_log_likelihood

    x, dx, dt = data.validation_set.tensors
    drift = system.averaged_drift(x.double()).float()
    return float(em_negative_log_likelihood(dx, dt, drift, drift, torch.tensor([system.sigma])).mean())


def simulate_to(out, name, system_name, params, t_end, experiments=1, seed=0, dt=None):
    from torchmf import systems

    system = systems.get(system_name, **params)
    # one file per setting, reused when present: the full tilted path takes ~10 minutes to simulate
    tag = "-".join(f"{key}{value:g}" for key, value in sorted(dict(params, t_end=t_end, experiments=experiments,
                                                                    seed=seed, dt=dt or 0.0).items()))
    target = Path(out) / "data" / f"{name}-{tag}.npz"
    if target.exists():
        return target, system
    data = system.simulate(t_end=t_end, n_experiments=experiments, seed=seed, dtype=torch.float64, progress=False,
                           dt=dt)
    return data.save(target), system


def cubic_path(args):
    """The cubic path: the recipe (full) or a T = 400 path simulated here (quick); returns (recipe, path)."""
    source = size("cubic_path", args.quick)
    if isinstance(source, str):
        return source, None
    # seed 0, the recipe's: the first 1000 time units of the full path. Seed 5 (the first choice) gave
    # an atypical path: theta fitted with the exact fast law came out (0.15, 0.62), 14.5% drift error,
    # so no estimator could separate from F = -x (20.9%); seed 0's floor is 7.3%
    path, _ = simulate_to(args.out, "cubic", "fastslow_cubic", {}, source, seed=0, dt=0.005)
    return None, str(path)


def heldout_states(data, count=2000):
    """Up to ``count`` evenly spaced states of the held-out end of the path: ``(n, 1)``."""
    data.setup("validate")
    x = data.validation_set.tensors[0]
    return x[torch.linspace(0, x.shape[0] - 1, min(count, x.shape[0])).long()]


class _KnownDrift(torch.nn.Module):
    """A drift given as a function (the true averaged drift, a fitted line) with a constant sigma, for simulate_reduced."""

    def __init__(self, function, sigma):
        super().__init__()
        self.function, self.sigma = function, torch.tensor([float(sigma)])

    def drift(self, x):
        return self.function(x)


def heldout_w1(data, system, models, coefficients, paths=512, t_end=20.0):
    """W1 between the states of the held-out end of the path and the long-run law of each reduced SDE
    (``paths`` simulations from x = 0 to ``t_end``, well past the relaxation time ~1), with the true
    averaged SDE as the floor (the held-out window is finite) and the fitted line as the trivial baseline."""
    from scipy.stats import wasserstein_distance

    from torchmf.averaging import simulate_reduced

    heldout = heldout_states(data, 100000)[:, 0].double().numpy()
    candidates = dict(models)
    candidates["true averaged SDE"] = _KnownDrift(lambda x: system.averaged_drift(x.double()).to(x), system.sigma)
    line = coefficients.float()
    candidates["linear fit F = c0 + c1 x"] = _KnownDrift(lambda x: line[0] + line[1] * x, models["flow"].sigma)
    distances = {}
    for name, model in candidates.items():
        final = simulate_reduced(model, torch.zeros(paths, 1), torch.tensor([0.0, t_end]), dt=0.02, seed=7,
                                 n_samples=64).positions[:, -1, 0, 0]
        distances[name] = float(wasserstein_distance(final.double().numpy(), heldout))
    return distances


def exact_law_fit(system, x, dx, dt, grid, n_nodes=512, n_samples=20000):
    """The statistical floor of a one-dimensional path: theta fitted by least squares with the *exact* fast
    law, scored on ``grid``: ``(theta, relative L2 error)``. The features E_rho[Phi(x, Y)] come from
    ``n_samples`` invariant draws at ``n_nodes`` nodes, interpolated linearly to the states (a few draws
    per state would put noise in the regressors and bias theta towards 0)."""
    generator = torch.Generator().manual_seed(0)
    def features_at(points):
        return system.drift_features(points.unsqueeze(-2), system.sample_invariant(
            points, n_samples, generator)).mean(-3)  # (n, 1, P)
    low, high = float(x.min()), float(x.max())
    nodes = torch.linspace(low, high, n_nodes, dtype=torch.float64).unsqueeze(-1)
    table = features_at(nodes)
    position = (x.double()[:, 0] - low) / (high - low) * (n_nodes - 1)
    index = position.floor().clamp(0, n_nodes - 2).long()
    weight = (position - index).reshape(-1, 1, 1)
    features = (1 - weight) * table[index] + weight * table[index + 1]
    scale = dt.double().sqrt().reshape(-1, 1, 1)
    theta = torch.linalg.lstsq((features * scale).reshape(-1, features.shape[-1]),
                               (dx.double().unsqueeze(-1) / scale).reshape(-1)).solution
    truth = system.averaged_drift(grid.double())
    return theta.tolist(), relative_l2(features_at(grid.double()) @ theta, truth)


def cubic_section(report, args):
    from torchmf.averaging.plots import drift_band_plot

    quick = args.quick
    recipe, path = cubic_path(args)
    model, data, seconds = train_point(recipe=recipe, path=path, steps=size("cubic_steps", quick),
                                       system="fastslow_cubic", theta_init=[0.5, 0.5])
    neural, _, _ = train_point(recipe=recipe, path=path, steps=size("neural_steps", quick),
                               system="fastslow_cubic", density="neural", learning_rate=0.005)
    system = model.system
    coefficients = linear_drift_fit(*data.train_set.tensors)
    with torch.no_grad():
        grids = {"training range (5-95% quantiles)": model.quantile_grid(200), "held-out end of the path":
                 heldout_states(data)}
        errors = {}
        for where, points in grids.items():
            truth = system.averaged_drift(points.double())
            generator = torch.Generator().manual_seed(0)
            errors[where] = {"flow": relative_l2(model.drift(points, n_samples=4096, generator=generator), truth),
                             "neural": relative_l2(neural.drift(points), truth),
                             "linear fit F = c0 + c1 x": relative_l2(coefficients[0] + coefficients[1] * points, truth),
                             "F = -x": relative_l2(-points, truth)}
    floor_theta, floor_error = exact_law_fit(system, *data.train_set.tensors, model.quantile_grid(200))
    report.metrics["cubic"] = {
        "exact_law_fit": {"theta": floor_theta, "drift_relative_l2": floor_error},
        "heldout_w1_to_stationary_law": heldout_w1(data, system, {"flow": model, "neural": neural},
                                                   coefficients),
        "drift_relative_l2": errors, "linear_fit_coefficients": coefficients.tolist(), "train_seconds": seconds,
        "theta": model.theta.tolist(), "sigma": model.sigma.tolist(), "quantile_range": model.data_range[:2, 0].tolist(),
        "heldout_nll_per_transition": {"flow": validation_nll(model, data), "neural_baseline": validation_nll(neural, data),
                                       "true_averaged_model": true_nll(system, data)}}
    target = CUBIC_TARGET[1 if quick else 0]
    note = (f" (quick: T = {size('cubic_path', True):g}, whose exact-law fit is {floor_error:.1%} off; full target 0.05 "
            "on T = 2500)") if quick else ""
    for where, values in errors.items():
        # the stronger of the two trivial answers: the untrained guess F = -x, or the best line
        trivial = min(("F = -x", "linear fit F = c0 + c1 x"), key=lambda name: values[name])
        report.check(f"fastslow_cubic, fast law learned from the path: relative L2 error of F on the {where}",
                     round(values["flow"], 4), f"<= {target}{note}", lambda v: v <= target,
                     baseline=(f"the better trivial drift: {trivial}", round(values[trivial], 4)))
    with torch.no_grad():
        grid = grids["training range (5-95% quantiles)"]
        generator = torch.Generator().manual_seed(0)
        drift_band_plot(report.path("averaging_cubic_drift.png"), grid, system.averaged_drift(grid),
                        {"flow-averaged F": model.drift(grid, n_samples=2048, generator=generator),
                         "neural baseline": neural.drift(grid),
                         "linear fit (baseline)": coefficients[0].float() + coefficients[1].float() * grid},
                        title=f"fastslow_cubic: relative L2 error {errors['training range (5-95% quantiles)']['flow']:.3f}")
    return model


def tilted_section(report, args):
    from scipy.stats import wasserstein_distance

    from torchmf.averaging import drift_error
    from torchmf.averaging.plots import fast_law_plot

    quick = args.quick
    params = {"eps": size("tilted_eps", quick)}
    path, system = simulate_to(args.out, "tilted_well", "fastslow_tilted_well", params, size("tilted_t_end", quick),
                               dt=size("tilted_micro_dt", quick))
    results, models = {}, {}
    for recipe, training in TILTED_TRAINING.items():
        extra = {"fast_law_prefit_steps": size("tilted_fast_law_steps", quick)} if recipe == "known fast density" else {}
        for density in ("flow", "gaussian"):
            model, _, seconds = train_point(path=str(path), steps=size("tilted_steps", quick),
                                            system="fastslow_tilted_well", density=density, theta_init=[0.5, 0.5],
                                            **training, **extra)
            low, high = model.data_range[0, 0].item(), model.data_range[1, 0].item()
            points = torch.linspace(low, high, 5).unsqueeze(-1)
            with torch.no_grad():
                learned = model.sample_fast(points, 4000, torch.Generator().manual_seed(1))
            truth = system.sample_invariant(points, 4000, torch.Generator().manual_seed(2))
            per_point = [float(wasserstein_distance(learned[i, :, 0].numpy(), truth[i, :, 0].numpy())) for i in range(5)]
            results[(recipe, density)] = {"drift_relative_l2": drift_error(model), "mean_w1_to_true_fast_law":
                                          sum(per_point) / 5, "w1_per_point": per_point, "w1_points": points[:, 0].tolist(),
                                          "theta": model.theta.tolist(), "train_seconds": seconds}
            models[(recipe, density)] = model
    report.metrics["tilted_well"] = {f"{recipe} / {density}": values for (recipe, density), values in results.items()}
    quick_note = (" (quick: on a path of T = 40 the statistical error of theta, ~30%, swamps the closure's structural "
                  "10-30%; only the full size can separate them)") if quick else ""
    for recipe in TILTED_TRAINING:
        flow, gaussian = results[(recipe, "flow")], results[(recipe, "gaussian")]
        # absolute targets: the closure is the trivial answer (one Gaussian per x) and must fail them
        for metric, target, label in (("drift_relative_l2", 0.1, "relative L2 error of F"),
                                      ("mean_w1_to_true_fast_law", 0.05, "mean W1 of q(y|x) to the true rho_x")):
            report.check(f"fastslow_tilted_well, fast law {recipe}: flow {label}", round(flow[metric], 4),
                         f"<= {target}" + (quick_note if metric == "drift_relative_l2" else ""),
                         lambda v, t=target: v <= t,
                         baseline=("Gaussian closure, same recipe", round(gaussian[metric], 4)))
    low, high = (models[("learned from the path", "flow")].data_range[i, 0].item() for i in (0, 1))
    shown = torch.tensor([[low], [0.0], [high]])
    grid, density_values = system.invariant_density(shown.double())
    with torch.no_grad():
        samples = {f"flow q_phi ({recipe})": models[(recipe, "flow")].sample_fast(
            shown, 20000, torch.Generator().manual_seed(3))[..., 0] for recipe in TILTED_TRAINING}
        samples["Gaussian closure (learned from the path)"] = models[("learned from the path", "gaussian")].sample_fast(
            shown, 20000, torch.Generator().manual_seed(3))[..., 0]
    fast_law_plot(report.path("averaging_fast_law.png"), shown[:, 0].tolist(), grid, density_values, samples,
                  title="fastslow_tilted_well: q(y | x) against the true fast law")


def coverage_section(report, args):
    """Independent datasets; per dataset a variational fit; count 90% intervals containing the truth."""
    from torchmf.averaging.plots import drift_band_plot, posterior_pairs_plot
    from torchmf.averaging.variational import band_scores
    from trainers.averaged import AveragedDynamicsModule, VariationalAveragedDynamicsModule, fit_quietly
    from trainers.slow_path_data import SlowPathDataModule

    quick = args.quick
    count = size("coverage_datasets", quick)
    path, system = simulate_to(args.out, "coverage", "fastslow_cubic", {}, size("coverage_t_end", quick),
                               experiments=count, seed=11)
    # the fast-law flow depends on g and tau only: fit it once to the stationarity condition (no data)
    warm = AveragedDynamicsModule(system="fastslow_cubic", n_samples=32)
    warm.model.set_data_range(torch.tensor([[-1.8], [1.8]]))
    optimizer = torch.optim.Adam(warm.model.density.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, size("penalty_pretrain_steps", quick))
    torch.manual_seed(0)
    for _ in range(size("penalty_pretrain_steps", quick)):
        loss = warm.model.stationarity_penalty(warm.model.penalty_points(128))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    names = ["a", "b", "sigma"]
    truth = system.true_theta.tolist() + [system.sigma]
    kinds = ("fitted", "untrained", "uncorrected sigma")
    inside = {kind: {name: 0 for name in names} for kind in kinds}
    widths = {name: [] for name in names}
    start = time.perf_counter()
    for index in range(count):
        data = SlowPathDataModule(path=str(path), experiment=index, batch_size=512, progress=False)
        module = VariationalAveragedDynamicsModule(system="fastslow_cubic", theta_init=[0.5, 0.5], n_samples=16,
                                                   penalty_weight=0.0, learning_rate=0.01, seed=index)
        module.model.model.density.load_state_dict(warm.model.density.state_dict())
        module.model.model.density.requires_grad_(False)  # q_phi depends on g and tau only: fitted once above
        untrained = {}
        with torch.no_grad():
            untrained["lower"], untrained["upper"] = module.model.credible_intervals(
                0.9, generator=torch.Generator().manual_seed(index), corrected_sigma=False)
        fit_quietly(module, data, size("coverage_steps", quick), seed=index)
        model = module.model.eval()
        intervals = {"untrained": (untrained["lower"], untrained["upper"])}
        with torch.no_grad():
            intervals["fitted"] = model.credible_intervals(0.9, generator=torch.Generator().manual_seed(index))
            intervals["uncorrected sigma"] = model.credible_intervals(
                0.9, generator=torch.Generator().manual_seed(index), corrected_sigma=False)
        for kind, (lower, upper) in intervals.items():
            lower = lower.tolist()[:2] + [math.exp(float(lower[2]))]
            upper = upper.tolist()[:2] + [math.exp(float(upper[2]))]
            for name, low, high, value in zip(names, lower, upper, truth):
                inside[kind][name] += int(low <= value <= high)
                if kind == "fitted":
                    widths[name].append(high - low)
        if index == 0:
            first = model
    seconds = time.perf_counter() - start
    band = band_scores(first, n_points=100)
    report.metrics["coverage"] = {
        "datasets": count, "inside_90": inside,
        "clopper_pearson_90": {kind: {name: clopper_pearson(value, count) for name, value in counts.items()}
                               for kind, counts in inside.items()},
        "mean_width_90": {name: sum(values) / len(values) for name, values in widths.items()}, "seconds": seconds,
        "first_dataset_band": {key: band[key] for key in ("inside_fraction", "median_relative_l2",
                                                           "median_roughness_ratio")},
        "sigma_note": "sigma corrected for the fast fluctuations (eps D_theta(x), Poisson equation) and the Euler "
                      "step (1 + F' dt), averaged over the path's occupation (torchmf.variational)"}
    if quick:  # 6 datasets have no power per parameter: pool the 18 intervals (p = 0.6 passes 14/18 9% of the time)
        pooled = {kind: sum(counts.values()) for kind, counts in inside.items()}
        report.check("variational posterior: 90% intervals containing the truth, (a, b, sigma) pooled over "
                     f"{count} datasets", pooled["fitted"], f">= 14 of {3 * count}", lambda v: v >= 14,
                     baseline=("untrained posterior (initial q_psi)", pooled["untrained"]))
    else:
        for name in names:
            base = ("uncorrected Euler-Maruyama sigma", inside["uncorrected sigma"][name]) if name == "sigma" else (
                "untrained posterior (initial q_psi)", inside["untrained"][name])
            report.check(f"variational posterior: 90% intervals containing the true {name} over {count} datasets "
                         f"(Clopper-Pearson 90%: {clopper_pearson(inside['fitted'][name], count)})",
                         inside["fitted"][name], f">= {COVERAGE_NEEDED} of {count}", lambda v: v >= COVERAGE_NEEDED,
                         baseline=base)
    drift_band_plot(report.path("averaging_credible_band.png"), band["grid"], band["truth"],
                    {"posterior median F": band["median"]}, band=(band["lower"], band["upper"]),
                    title="fastslow_cubic, one path of length "
                          f"{size('coverage_t_end', quick):g}: 90% credible band")
    with torch.no_grad():
        theta, log_sigma = first.posterior_samples(3000, torch.Generator().manual_seed(1))
    posterior_pairs_plot(report.path("averaging_posterior_pairs.png"), torch.cat((theta, log_sigma.exp()), -1),
                         names, truth, title="posterior q_psi(a, b, sigma corrected), one dataset")


TAGGED = {  # full / quick
    "scales": ((100.0, 1000.0, 15000.0), (1000.0, 15000.0)),
    "dims": ((1, 2), (1, 2)),
    "t_end": (400.0, 200.0),
    "flow_steps": (400, 150),
    # the MLP gets as many steps in quick mode: 300 left it undertrained (d = 1, n = 1000, T = 200:
    # MSE 0.067 after 300 steps)
    "neural_steps": (800, 800),
    # the structured model's variants: "b known" is the paper's setting (the note: the interaction b
    # is known in form, sigma known; only the fast law is learned); "theta learned" also fits the
    # two constants of b (harder than the paper: x and |x|^2 x are nearly collinear over the range)
    "variants": (("b known", "theta learned"), ("b known",)),
}
TAGGED_RATIO = 0.2  # the paper (secondhand): 0.0029 / 0.014 and 0.0002 / 0.008 for d = 1, N = 10


def tagged_section(report, args):
    """The paper's benchmark: a tagged particle in N solvent particles (torchmf.systems.tagged_particle):
    the structured flow-averaged model (q_phi learned from the path by penalized likelihood) against an
    unstructured MLP drift fitted to the same path; MSE against the true averaged drift on the visited states."""
    quick = args.quick
    pick = 1 if quick else 0
    results = {}
    dims = [int(d) for d in args.tagged_dims.split(",")] if args.tagged_dims else TAGGED["dims"][pick]
    scales = [float(n) for n in args.tagged_scales.split(",")] if args.tagged_scales else TAGGED["scales"][pick]
    solvents = [int(n) for n in args.tagged_solvent.split(",")]
    variants = args.tagged_variants.split(",") if args.tagged_variants else TAGGED["variants"][pick]
    if "b known" not in variants or not set(variants) <= set(TAGGED["variants"][0]):
        raise ValueError(f"--tagged-variants: expected 'b known' (the checked model) and optionally 'theta learned', "
                         f"got {variants}")
    for d, solvent, scale in [(d, solvent, scale) for d in dims for solvent in solvents for scale in scales]:
        params = {"d": d, "scale": scale, "n_solvent": solvent}
        # N = 10 keeps its original data seed (paths reused from earlier runs); other N shift it
        path, system = simulate_to(args.out, f"tagged-d{d}", "tagged_particle", params, TAGGED["t_end"][pick],
                                   seed=int(scale) + d + 100 * (solvent - 10), dt=0.005)
        batch = 512  # d = 2: minibatch likelihood (path statistics are one-dimensional)
        common = dict(path=str(path), batch_size=batch, system="tagged_particle", system_params=params)
        models, seconds = {}, {}
        for variant in variants:
            known = variant == "b known"
            models[variant], data, seconds[variant] = train_point(
                steps=TAGGED["flow_steps"][pick], theta_init=[1.0, 1.0] if known else [0.5, 0.5],
                freeze_theta=known, n_samples=16, penalty_points=64, **common)
        models["neural"], _, seconds["neural"] = train_point(steps=TAGGED["neural_steps"][pick], density="neural",
                                                             learning_rate=0.005, **common)
        states = data.train_states[torch.linspace(0, data.train_states.shape[0] - 1, 2000).long()]
        x, dx, dt = data.train_set.tensors
        ones = torch.ones(x.shape[0], 1)
        coefficients = torch.linalg.lstsq(  # trivial baseline: the best linear drift, F = A x + c
            torch.cat((x, ones), -1).double(), (dx / dt.unsqueeze(-1)).double()).solution
        with torch.no_grad():
            truth = system.averaged_drift(states.double())
            # 8192 fast draws per state (plain: N d > 1 fast coordinates): with 256 the Monte-Carlo
            # error of the coupling term alone had a mean square of ~1e-3, the size of the flow's MSE
            generator = torch.Generator().manual_seed(0)
            estimates = {name: torch.cat([model.drift(part, n_samples=8192, generator=generator)
                                          for part in states.split(100)])
                         if name != "neural" else model.drift(states) for name, model in models.items()}
            estimates["linear"] = torch.cat((states, torch.ones(states.shape[0], 1)), -1).double() @ coefficients
        mse = {name: float(((value.double() - truth) ** 2).mean()) for name, value in estimates.items()}
        key = f"d={d}, n={scale:g}" if solvent == 10 else f"d={d}, N={solvent}, n={scale:g}"
        results[key] = {"mse": mse, "train_seconds": seconds,
                        "theta": {name: models[name].theta.tolist() for name in variants},
                        "sigma": {name: model.sigma.tolist() for name, model in models.items()}}
        print(f"tagged {key}: {results[key]}", flush=True)
        report.metrics["tagged_particle"] = {"n_solvent": solvents, "t_end": TAGGED["t_end"][pick], "results": results,
                                             "mse_on": "2000 states of the training path (the visited range)"}
        if scale >= 1000:  # the acceptance line is about the two larger scale separations
            solvent_label = "" if ", N=" in key else ", N = 10"
            report.check(f"tagged particle ({key}{solvent_label}), b known, fast law learned from the path: "
                         "flow-averaged drift MSE / unstructured network's", round(mse["b known"] / mse["neural"], 4),
                         f"<= {TAGGED_RATIO}", lambda v: v <= TAGGED_RATIO,
                         baseline=("best linear drift / unstructured network", round(mse["linear"] / mse["neural"], 4)))
        report.write()  # after each setting: a d = 2 setting takes most of an hour on a loaded machine


def main(argv=None) -> int:
    parser = standard_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--sections", default="cubic,tilted,coverage,tagged", help="comma-separated subset to run")
    parser.add_argument("--tagged-dims", default=None, help="tagged particle: comma-separated d (default 1,2)")
    parser.add_argument("--tagged-scales", default=None,
                        help="tagged particle: comma-separated scale separations n (default 100,1000,15000; quick "
                             "1000,15000)")
    parser.add_argument("--tagged-solvent", default="10",
                        help="tagged particle: comma-separated numbers N of solvent particles (default 10; the paper "
                             "also has 15, 20)")
    parser.add_argument("--tagged-variants", default=None,
                        help="tagged particle: comma-separated structured variants ('b known', 'theta learned'; "
                             "default both, quick 'b known')")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models: extra threads only contend on a shared CPU
    report = Report("reproduce_averaging", args)
    report.settings.update({key: size(key, args.quick) for key in SIZES})
    sections = args.sections.split(",")
    start = time.perf_counter()
    if "cubic" in sections:
        cubic_section(report, args)
    if "tilted" in sections:
        tilted_section(report, args)
    if "coverage" in sections:
        coverage_section(report, args)
    if "tagged" in sections:
        tagged_section(report, args)
    report.metrics["total_seconds"] = time.perf_counter() - start
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
