"""Flow-averaged dynamics: learned vs true averaged drift, fast law vs truth, posterior coverage, held-out NLL.

    python scripts/reproduce_averaging.py [--out runs] [--quick]

Checks (one per acceptance line of issue 5):
  * fastslow_cubic: relative L2 error of the learned F on the 5-95% quantile range <= 5%;
  * fastslow_tilted_well: flow beats the Gaussian closure by >= 2x in drift error and in W1 to rho_x;
  * variational posterior: 90% credible intervals contain the true theta in >= 16 of 20 datasets.
Writes OUT/reproduce_averaging.json and averaging_*.png beside it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import Report, standard_parser  # noqa: E402

import torch  # noqa: E402

SIZES = {  # full / quick
    "cubic_recipe": ("datasets/fastslow_cubic.yaml", "datasets/fastslow_cubic_small.yaml"),
    "cubic_steps": (1000, 250),
    # full: a long path near the averaging limit. With eps = 1e-2 the fast law lags x (theta fitted
    # with the exact rho_x comes out ~0.81 instead of 1), and on a path of T = 400 the statistical
    # error of theta alone (~12%) is as large as the Gaussian closure's structural error (~14%)
    "tilted_t_end": (2500.0, 40.0),
    "tilted_eps": (2e-3, 1e-2),
    "tilted_micro_dt": (2e-4, 5e-4),
    "tilted_steps": (600, 150),
    "tilted_fast_law_steps": (1500, 300),
    "coverage_datasets": (20, 6),
    "coverage_t_end": (100.0, 40.0),
    "coverage_steps": (300, 200),
    "penalty_pretrain_steps": (1000, 300),
    "neural_steps": (800, 200),
}
# the fast law q(y | x) depends on g and tau only: it is fitted first to the known fast law (reverse KL
# from a tempered, broad start; flow and Gaussian closure alike) and frozen, then the likelihood fits
# theta and sigma. Jointly trained (penalty warm-up, weight 100), the likelihood pulled (theta, q) into
# the mirrored basin (b < 0, q in the other well) at full size, and the stationarity penalty alone
# never grew the second mode near x = 0 (see docs/benchmarks.md)
TILTED_TRAINING = dict(bins=16, n_samples=64, fast_law_temperature=3.0)
CUBIC_TARGET = (0.05, 0.5)  # quick: a path of length 40, whose statistical drift error alone is ~25%
COVERAGE_NEEDED = (16, 4)


def size(name, quick):
    return SIZES[name][1 if quick else 0]


def train_point(recipe=None, path=None, steps=1000, seed=0, **model):
    """Train an AveragedDynamicsModule; returns (model, datamodule, seconds)."""
    from trainers.averaged import AveragedDynamicsModule, fit_quietly
    from trainers.slow_path_data import SlowPathDataModule

    data = SlowPathDataModule(recipe=recipe or "datasets/fastslow_cubic.yaml", path=path, batch_size=512,
                              progress=False)
    data.prepare_data()  # simulate and cache before the clock starts
    module = AveragedDynamicsModule(seed=seed, **model)
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


def cubic_section(report, args):
    from torchmf.averaging import drift_error
    from torchmf.averaging_plots import drift_band_plot

    quick = args.quick
    model, data, seconds = train_point(recipe=size("cubic_recipe", quick), steps=size("cubic_steps", quick),
                                       system="fastslow_cubic", theta_init=[0.5, 0.5])
    error = drift_error(model)
    neural, _, _ = train_point(recipe=size("cubic_recipe", quick), steps=size("neural_steps", quick),
                               system="fastslow_cubic", density="neural", learning_rate=0.005)
    report.metrics["cubic"] = {
        "drift_relative_l2": error, "neural_baseline_drift_relative_l2": drift_error(neural),
        "train_seconds": seconds, "theta": model.theta.tolist(), "sigma": model.sigma.tolist(),
        "quantile_range": model.data_range[:2, 0].tolist(),
        "heldout_nll_per_transition": {"flow": validation_nll(model, data), "neural_baseline": validation_nll(neural, data),
                                       "true_averaged_model": true_nll(model.system, data)}}
    target = CUBIC_TARGET[1 if quick else 0]
    report.check("fastslow_cubic: relative L2 error of learned F on the 5-95% quantile range", round(error, 4),
                 f"<= {target}" + (" (quick size: path of length 40; full target 0.05)" if quick else ""), error <= target)
    with torch.no_grad():
        grid = model.quantile_grid(100)
        generator = torch.Generator().manual_seed(0)
        drift_band_plot(report.path("averaging_cubic_drift.png"), grid, model.system.averaged_drift(grid),
                        {"flow-averaged F": model.drift(grid, n_samples=2048, generator=generator),
                         "neural baseline": neural.drift(grid)},
                        title=f"fastslow_cubic: relative L2 error {error:.3f}")
    return model


def tilted_section(report, args):
    from scipy.stats import wasserstein_distance

    from torchmf.averaging import drift_error
    from torchmf.averaging_plots import fast_law_plot

    quick = args.quick
    params = {"eps": size("tilted_eps", quick)}
    path, system = simulate_to(args.out, "tilted_well", "fastslow_tilted_well", params, size("tilted_t_end", quick),
                               dt=size("tilted_micro_dt", quick))
    models, errors, distances, per_point, times = {}, {}, {}, {}, {}
    for density in ("flow", "gaussian"):
        model, _, seconds = train_point(path=str(path), steps=size("tilted_steps", quick),
                                        system="fastslow_tilted_well", density=density, theta_init=[0.5, 0.5],
                                        fast_law_prefit_steps=size("tilted_fast_law_steps", quick),
                                        **TILTED_TRAINING)
        models[density] = model
        errors[density] = drift_error(model)
        low, high = model.data_range[0, 0].item(), model.data_range[1, 0].item()
        points = torch.linspace(low, high, 5).unsqueeze(-1)
        with torch.no_grad():
            learned = model.sample_fast(points, 4000, torch.Generator().manual_seed(1))
        truth = system.sample_invariant(points, 4000, torch.Generator().manual_seed(2))
        per_point[density] = [float(wasserstein_distance(learned[i, :, 0].numpy(), truth[i, :, 0].numpy()))
                              for i in range(5)]
        distances[density] = sum(per_point[density]) / 5
        times[density] = seconds
    report.metrics["tilted_well"] = {"drift_relative_l2": errors, "mean_w1_to_true_fast_law": distances,
                                     "w1_points": points[:, 0].tolist(), "w1_per_point": per_point,
                                     "theta": {name: model.theta.tolist() for name, model in models.items()},
                                     "train_seconds": times}
    drift_ratio = errors["gaussian"] / max(errors["flow"], 1e-12)
    w1_ratio = distances["gaussian"] / max(distances["flow"], 1e-12)
    report.check("fastslow_tilted_well: Gaussian-closure / flow drift error", round(drift_ratio, 3),
                 ">= 2" + (" (quick size: on a path of T = 40 the statistical error of theta, ~30%, swamps the "
                           "closure's structural 10-30%; only the full size can separate them)" if quick else ""),
                 drift_ratio >= 2)
    report.check("fastslow_tilted_well: Gaussian-closure / flow W1 to true rho_x", round(w1_ratio, 3), ">= 2",
                 w1_ratio >= 2)
    shown = torch.tensor([[low], [0.0], [high]])
    grid, density_values = system.invariant_density(shown.double())
    with torch.no_grad():
        samples = {name: model.sample_fast(shown, 20000, torch.Generator().manual_seed(3))[..., 0]
                   for name, model in models.items()}
    fast_law_plot(report.path("averaging_fast_law.png"), shown[:, 0].tolist(), grid, density_values,
                  {"flow q_phi": samples["flow"], "Gaussian closure": samples["gaussian"]},
                  title="fastslow_tilted_well: q(y | x) against the true fast law")


def coverage_section(report, args):
    """Independent datasets; per dataset a variational fit; count 90% intervals containing the truth."""
    from torchmf.averaging import drift_error
    from torchmf.averaging_plots import drift_band_plot, posterior_pairs_plot
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
    inside = {name: 0 for name in names}
    widths = {name: [] for name in names}
    start = time.perf_counter()
    for index in range(count):
        data = SlowPathDataModule(path=str(path), experiment=index, batch_size=512, progress=False)
        module = VariationalAveragedDynamicsModule(system="fastslow_cubic", theta_init=[0.5, 0.5], n_samples=16,
                                                   penalty_weight=0.0, learning_rate=0.01, seed=index)
        module.model.model.density.load_state_dict(warm.model.density.state_dict())
        module.model.model.density.requires_grad_(False)  # q_phi depends on g and tau only: fitted once above
        fit_quietly(module, data, size("coverage_steps", quick), seed=index)
        model = module.model.eval()
        with torch.no_grad():
            lower, upper = model.credible_intervals(0.9, generator=torch.Generator().manual_seed(index))
        lower = lower.tolist()[:2] + [float(torch.tensor(lower[2]).exp())]
        upper = upper.tolist()[:2] + [float(torch.tensor(upper[2]).exp())]
        for name, low, high, value in zip(names, lower, upper, truth):
            inside[name] += int(low <= value <= high)
            widths[name].append(high - low)
        if index == 0:
            first = model
    seconds = time.perf_counter() - start
    report.metrics["coverage"] = {"datasets": count, "inside_90": inside, "mean_width_90": {
        name: sum(values) / len(values) for name, values in widths.items()}, "seconds": seconds,
        "dataset_drift_relative_l2_first": drift_error(first)}
    needed = COVERAGE_NEEDED[1 if quick else 0]
    worst = min(inside["a"], inside["b"])
    report.check("variational posterior: 90% intervals containing true theta = (a, b) (worst parameter)",
                 f"{worst}/{count}", f">= {needed}/{count}", worst >= needed)
    report.metrics["coverage"]["sigma_note"] = (
        "sigma is in the posterior too; its interval is reported, not checked: the Euler-Maruyama "
        "likelihood biases sigma by about 1% (O(dt) and fast fluctuations), more than its posterior width")
    with torch.no_grad():
        grid = first.quantile_grid(100)
        generator = torch.Generator().manual_seed(0)
        lower, median, upper = first.credible_band(grid, n_parameter_samples=300, generator=generator)
        drift_band_plot(report.path("averaging_credible_band.png"), grid, system.averaged_drift(grid),
                        {"posterior median F": median}, band=(lower, upper),
                        title="fastslow_cubic, one path of length "
                              f"{size('coverage_t_end', quick):g}: 90% credible band")
        theta, log_sigma, _ = first.sample_parameters(3000, torch.Generator().manual_seed(1))
        posterior_pairs_plot(report.path("averaging_posterior_pairs.png"),
                             torch.cat((theta, log_sigma.exp()), -1), names, truth,
                             title="posterior q_psi(a, b, sigma), one dataset")


def main(argv=None) -> int:
    parser = standard_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--sections", default="cubic,tilted,coverage", help="comma-separated subset to run")
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
    report.metrics["total_seconds"] = time.perf_counter() - start
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
