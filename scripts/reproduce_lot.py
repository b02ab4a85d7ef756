"""Reproduce the LOT projective-integration experiments (LOT paper, sections 6 and 7).

Writes OUT/reproduce_lot.json and PNGs: W2 to the control run vs time (Fig. 6.5), scatter panels
after the first and last large steps, the particle-wise baseline panel (Fig. 6.9), the LOT/PCA
trajectory (Fig. 6.6), an adaptive-H run, and chemotaxis with both re-initialization schemes
(Figs. 7.2 and 7.5).

    python scripts/reproduce_lot.py --out runs            # Table 6.1 with N = 2,000; chemotaxis N = 10,000
    python scripts/reproduce_lot.py --out runs --quick    # small sizes, same checks
    python scripts/reproduce_lot.py --only adaptive       # one experiment (box, adaptive, chemotaxis)

Scoring (issue 22): every large step is scored on its own in the ``steps`` experiment, from a cloud of the
true law, against the Euler step with the exact velocity (the oracle) and standing still from the same
cloud (scripts/lot_steps.py). The projective runs below keep their W2-versus-time figures and metrics.

Scoring of the runs (issue 14, now metrics): the box diffusion equilibrates (a fresh uniform sample on the box is within
2x the sampling floor from t ~ 500 at N = 1,000-2,000), so the checks score LOT at the large-step
records *before* equilibrium, where the fresh equilibrium sample fails, as W2(LOT, control) over
the floor W2(control', control); each check carries the trivial answer computed in the same run:
standing still (the cloud at the start of the large step, not moved) or a fresh sample of the
equilibrium law, whichever is better. Bookkeeping (micro steps per cycle, 1/3 by construction)
and the equilibrated final W2 are metrics. The control runs do not depend on the transport
solver and are cached in OUT/cache/ (keyed by system, N, seed and times), so re-running after a
transport change re-computes only the LOT runs.

W2 is :func:`torchmf.metrics.w2`: sorting in 1-D (chemotaxis), the exact assignment for the
2-D clouds at these sizes. (Until issue 12 the 2-D clouds with N > 1,000 were scored by
``torchmf.lot.w2_distance``, the length of a debiased Sinkhorn map at 1% blur; measured on the
N = 2,000 control pairs it is 33% above to 13% below the exact W2, so it is not used.)
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch

from _report import Report, standard_parser

from torchmf import systems
from torchmf.data.files import atomic_path
from torchmf.lot import AdaptiveStep, ProjectiveIntegrator, SystemSimulator, lot_embedding, pca
from torchmf.metrics import w2
from torchmf.plots import line_plot, plt, save_figure, scatter_panels


def box_protocol(quick):
    if quick:
        return dict(particles=1000, k=80, step=85.0, burn_in=30.0, start_up=30.0, n_steps=4, recovery=50.0)
    return dict(particles=2000, k=80, step=85.0, burn_in=30.0, start_up=30.0, n_steps=16, recovery=50.0)


def chemotaxis_protocol(quick):
    if quick:
        return dict(particles=1000, k=80, step=95.0, burn_in=100.0, start_up=200.0, n_steps=4, recovery=0.0)
    return dict(particles=10_000, k=80, step=95.0, burn_in=100.0, start_up=200.0, n_steps=19, recovery=0.0)


def integrator(protocol, **extra):
    keys = ("k", "step", "burn_in", "start_up", "n_steps", "recovery")
    return ProjectiveIntegrator(**{key: protocol[key] for key in keys}, progress=False, **extra)


def first_index(stages, stage, last=False):
    indices = [i for i, s in enumerate(stages) if s == stage]
    return indices[-1] if last else indices[0]


FLOOR_RATIO = 2.0  # W2(LOT, control) within 2x the sampling floor W2(control', control) (the earlier convention)
EQUILIBRIUM_FAILS = 2.0  # a record is "before equilibrium" where the fresh uniform sample is > 2x the floor


def cached_control(report, lot, system, name, n, seed, times):
    """``lot.control`` of ``system`` (N = n, seed) at ``times``, cached in OUT/cache/ (controls use no transport)."""
    # the key holds the system's plain parameters too, so a changed system never reads a stale control
    parameters = sorted((k, v) for k, v in vars(system).items() if isinstance(v, (bool, int, float, str, list, tuple)))
    text = f"{name}|{parameters}|{n}|{seed}|{[round(float(t), 9) for t in times]}"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(report.out) / "cache" / f"lot_control_{name}_{n}_{seed}_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    control = lot.control(SystemSimulator(system, n, seed=seed), times)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(control, temporary)
    return control


def uniform_sample(count, like, seed, low=0.0, high=10.0):
    """A fresh sample of the box's equilibrium law (uniform on [low, high]^d), ``(count, N, d)``."""
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand((count,) + tuple(like.shape[-2:]), generator=generator, dtype=like.dtype)


def step_scores(run, control, second, equilibrium, indices):
    """W2/floor at the records ``indices`` for LOT, standing still over the large step, and the equilibrium sample."""
    rows = []
    for index in indices:
        start = max(i for i in range(index) if run.stages[i] in ("centre", "start-up", "initial"))
        floor = float(w2(second[index], control[index]))
        rows.append({"t": float(run.times[index]), "floor": floor,
                     "lot": float(w2(run.positions[index], control[index])) / floor,
                     "standing_still": float(w2(run.positions[start], control[index])) / floor,
                     "equilibrium_sample": float(w2(equilibrium[index], control[index])) / floor})
    return rows


def before_equilibrium_check(report, label, rows):
    """Worst LOT ratio over the large steps where the equilibrium sample fails; baseline: the better trivial answer."""
    scored = [row for row in rows if row["equilibrium_sample"] > EQUILIBRIUM_FAILS]
    if not scored:
        report.check(f"{label}: W2(LOT, control) / floor after each large step before equilibrium", None,
                     f"<= {FLOOR_RATIO}", None, skipped="no large step lands before equilibrium",
                     baseline=("standing still or a fresh equilibrium sample", None))
        return
    beaten = [row["t"] for row in scored if min(row["standing_still"], row["equilibrium_sample"]) < row["lot"]]
    report.metrics.setdefault("steps_where_a_trivial_answer_beats_lot", {})[label] = beaten
    worst = max(row["lot"] for row in scored)
    trivial = {name: max(row[name] for row in scored) for name in ("standing_still", "equilibrium_sample")}
    better = min(trivial, key=trivial.get)
    times = ", ".join(f"{row['t']:g}" for row in scored)
    report.check(f"{label}: worst W2(LOT, control) / floor right after the large steps landing before equilibrium "
                 f"(t = {times}; equilibrium sample > {EQUILIBRIUM_FAILS:g}x floor there)",
                 round(worst, 3), f"<= {FLOOR_RATIO}", lambda v: v <= FLOOR_RATIO,
                 baseline=(f"{better.replace('_', ' ')} (worst over the same steps)", round(trivial[better], 3)))


def box_experiment(report, quick):
    protocol = box_protocol(quick)
    report.settings["box"] = protocol
    box = systems.get("box_diffusion")
    n = protocol["particles"]
    lot = integrator(protocol)
    start = time.perf_counter()
    run = lot.run(SystemSimulator(box, n, seed=1))
    report.metrics["box_lot_seconds"] = time.perf_counter() - start
    particle = integrator(protocol, method="particle").run(SystemSimulator(box, n, seed=1))
    control = cached_control(report, lot, box, "box_diffusion", n, 2, run.times)
    second = cached_control(report, lot, box, "box_diffusion", n, 3, run.times)
    equilibrium = uniform_sample(len(run.times), run.positions, seed=7)
    keep = [i for i, s in enumerate(run.stages) if s in ("initial", "start-up", "centre", "euler", "burn-in",
                                                          "recovery")]
    times = run.times[keep]
    error = torch.stack([w2(run.positions[i], control[i]) for i in keep])
    floor = torch.stack([w2(second[i], control[i]) for i in keep])
    euler_records = [i for i, s in enumerate(run.stages) if s == "euler"]
    rows = step_scores(run, control, second, equilibrium, euler_records)
    first = rows[0]
    euler = euler_records[0]
    particle_ratio = float(w2(particle.positions[euler], control[euler])) / first["floor"]
    final, final_floor = float(error[-1]), float(floor[-1])
    final_equilibrium = float(w2(equilibrium[-1], control[-1]))
    report.metrics.update(box_micro_steps=run.micro_steps, box_control_steps=run.control_steps,
                          box_micro_step_ratio_total=run.micro_step_ratio,
                          box_cycle_ratio_bookkeeping=run.cycle_ratio,
                          box_final_w2_over_floor=final / final_floor,
                          box_final_equilibrium_sample_over_floor=final_equilibrium / final_floor,
                          box_final_w2=final, box_final_floor=final_floor,
                          box_first_step_particle_wise_over_floor=particle_ratio,
                          box_large_steps=rows,
                          box_w2_times=times.tolist(), box_w2=error.tolist(), box_floor=floor.tolist())
    # issue 22: "<= 2x floor" after the first step is out of reach of any estimator (the exact velocity's
    # Euler step is off by 1.8-3.9x the floor at N = 1,000-10,000) and later steps start from the run's own
    # cloud; the large steps are scored one at a time from control clouds in the "steps" experiment
    report.metrics["box_first_step_over_floor"] = first

    line_plot(report.path("lot_box_w2.png"), times, {"W2(LOT, control)": error, "W2(control, control')": floor},
              "t", "W2", f"2-D box diffusion, N = {n} (Fig. 6.5)", styles={"W2(LOT, control)": ".-"})
    last_euler = first_index(run.stages, "euler", last=True)
    first_burn, last_burn = first_index(run.stages, "burn-in"), first_index(run.stages, "burn-in", last=True)
    limits = ((0, 10), (0, 10))
    panels = {}
    for label, index in (("first step", euler), ("after burn-in", first_burn), ("last step", last_euler),
                         ("after last burn-in", last_burn)):
        t = float(run.times[index])
        panels[f"control t={t:g}"] = control[index]
        panels[f"LOT {label} t={t:g}"] = run.positions[index]
    scatter_panels(report.path("lot_box_scatter.png"), panels, "control (odd panels) vs LOT (even panels)",
                   limits=limits)
    t = float(run.times[euler])
    scatter_panels(report.path("lot_box_particlewise.png"),
                   {f"control t={t:g}": control[euler], f"LOT t={t:g}": run.positions[euler],
                    f"particle-wise t={t:g}": particle.positions[euler]},
                   "first large step: OT velocity vs particle-wise velocity (Fig. 6.9)", limits=limits)
    pca_figure(report, run, control, keep, box, quick)
    return run


def pca_figure(report, run, control, keep, box, quick):
    generator = torch.Generator().manual_seed(5)
    reference = torch.rand(run.positions.shape[1], 2, generator=generator) * 10
    stride = max(1, len(keep) // (8 if quick else 24))
    control_ids = keep[::stride]
    approx_ids = [i for i in keep if run.stages[i] in ("burn-in", "recovery")]
    control_embedding = lot_embedding(control[control_ids], reference)
    scores, axes, mean, explained = pca(control_embedding, 2)
    approx_scores = pca(lot_embedding(run.positions[approx_ids], reference), basis=(axes, mean))
    figure, axis = plt.subplots(figsize=(6, 4.5))
    shown = axis.scatter(scores[:, 0], scores[:, 1], c=run.times[control_ids], cmap="rainbow", s=14)
    axis.plot(scores[:, 0], scores[:, 1], "-", color="gray", lw=0.8)
    axis.plot(approx_scores[:, 0], approx_scores[:, 1], "k.", label="LOT after burn-in")
    figure.colorbar(shown, label="t")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.legend()
    axis.set_title("LOT embedding of the control run and the approximation (Fig. 6.6)")
    save_figure(figure, report.path("lot_box_pca.png"))
    report.metrics["box_pca_explained"] = explained.tolist()


def adaptive_experiment(report, quick):
    """Adaptive H to T = 2000; the controller's uncapped choice sqrt(2 tol / M) is recorded per step."""
    protocol = box_protocol(quick)
    box = systems.get("box_diffusion")
    n = protocol["particles"]
    t_end = 2000.0  # Table 6.1's T, also in --quick: the fixed start-up and recovery need a long run to amortize
    adaptive = AdaptiveStep(tolerance=0.5, min_step=protocol["step"], max_step=t_end / 2)
    # n_steps is only a cap in the adaptive mode: the step lengths decide how many cycles fit
    lot = integrator(dict(protocol, n_steps=64), adaptive=adaptive, t_end=t_end)
    run = lot.run(SystemSimulator(box, n, seed=11))
    control = cached_control(report, lot, box, "box_diffusion", n, 12, run.times)
    second = cached_control(report, lot, box, "box_diffusion", n, 13, run.times)
    equilibrium = uniform_sample(len(run.times), run.positions, seed=17)
    rows = step_scores(run, control, second, equilibrium, [i for i, s in enumerate(run.stages) if s == "euler"])
    controller = []
    for index, step in enumerate(run.large_steps):
        entry = dict(step)
        if index:
            previous = run.large_steps[index - 1]
            change = abs(step["speed"] - previous["speed"]) / (step["t0"] - previous["t0"])
            entry["speed_change_rate"] = change
            entry["uncapped_H"] = (2 * adaptive.tolerance / change) ** 0.5 if change > 0 else float("inf")
            entry["growth_cap"] = adaptive.growth * previous["H"]
            entry["on_growth_cap"] = bool(entry["uncapped_H"] > entry["growth_cap"])
        controller.append(entry)
    # the fixed-H protocol of Table 6.1 run to the same T: cycles of k h + H + burn-in, 2k + burn-in micro steps each
    cycle = protocol["k"] * run.dt + protocol["step"] + protocol["burn_in"]
    cycles = int((t_end - protocol["start_up"] - protocol["recovery"]) // cycle)
    fixed_ratio = (protocol["start_up"] + cycles * (2 * protocol["k"] * run.dt + protocol["burn_in"])
                   + protocol["recovery"]) / t_end
    final_floor = float(w2(second[-1], control[-1]))
    final = final_against_exact(box, run.positions[-1], control[-1], run.positions[0], n, t_end)
    report.metrics.update(adaptive_micro_step_ratio=run.micro_step_ratio, adaptive_large_steps=rows,
                          adaptive_controller=controller,
                          adaptive_final_w2_over_floor=float(w2(run.positions[-1], control[-1])) / final_floor,
                          adaptive_final_equilibrium_sample_over_floor=float(
                              w2(equilibrium[-1], control[-1])) / final_floor,
                          adaptive_final_against_exact=final,
                          fixed_protocol_micro_step_ratio_to_same_T=fixed_ratio)
    report.check("adaptive H to T = 2000: micro steps / plain run", round(run.micro_step_ratio, 4), "<= 1/3",
                 lambda v: v <= 1 / 3,
                 baseline=(f"fixed H = {protocol['step']:g} (Table 6.1 protocol, {cycles} cycles to the same T)",
                           round(fixed_ratio, 4)))
    report.check("adaptive H to T = 2000: final W2 over the plain micro run's, each the median over "
                 f"{EXACT_REFERENCES} exact samples of the law at T", round(final["adaptive_over_plain"], 3), "<= 1.1",
                 lambda v: v <= 1.1,
                 baseline=("standing still: the initial cloud, scored the same way (the oracle, a fresh exact "
                           f"sample of the law at T: {final['exact_over_plain']:.3f})",
                           round(final["still_over_plain"], 3)))
    return run


EXACT_REFERENCES = 8


def final_against_exact(box, adaptive_cloud, plain_cloud, initial_cloud, n, t_end):
    """The adaptive and plain runs' final clouds, a fresh exact sample (the oracle) and the initial cloud
    (standing still), each scored by its median W2
    to the same exact samples of the law at ``t_end``: one W2 between two clouds of 1,000 points varies
    by about 10% (coefficient of variation), so a single floor draw cannot judge a 10% target -- one
    draw put a fresh exact sample at 1.28x the floor."""
    import statistics

    generator = torch.Generator().manual_seed(2024)
    references = [box.exact_sample(n, t_end, generator) for _ in range(EXACT_REFERENCES)]
    fresh = box.exact_sample(n, t_end, generator)

    def score(cloud):
        return statistics.median(float(w2(cloud.double(), reference)) for reference in references)

    adaptive, plain, exact, still = score(adaptive_cloud), score(plain_cloud), score(fresh), score(initial_cloud)
    return dict(adaptive=adaptive, plain=plain, exact=exact, still=still, adaptive_over_plain=adaptive / plain,
                exact_over_plain=exact / plain, still_over_plain=still / plain)


def chemotaxis_experiment(report, quick):
    protocol = chemotaxis_protocol(quick)
    report.settings["chemotaxis"] = protocol
    model = systems.get("chemotaxis")
    n = protocol["particles"]
    results = {}
    for scheme in ("history-dependent", "history-independent"):
        lot = integrator(protocol, reinit=scheme)
        results[scheme] = lot.run(SystemSimulator(model, n, seed=21))
    run = results["history-dependent"]
    control = cached_control(report, integrator(protocol), model, "chemotaxis", n, 22, run.times)
    second = cached_control(report, integrator(protocol), model, "chemotaxis", n, 23, run.times)
    keep = [i for i, s in enumerate(run.stages) if s in ("centre", "euler", "burn-in", "recovery")]
    series, averages = {}, {}
    for scheme, result in results.items():
        values = torch.stack([w2(result.positions[i], control[i]) for i in keep])
        series[scheme] = values
        averages[scheme] = float(values.mean())
    floor = torch.stack([w2(second[i], control[i]) for i in keep])
    series["floor W2(control', control)"] = floor
    euler_records = [i for i, s in enumerate(run.stages) if s == "euler"]
    ratios = {}
    for scheme, result in results.items():
        ratios[scheme] = _mean([float(w2(result.positions[i], control[i]) / w2(second[i], control[i]))
                                for i in euler_records])
    standing = []
    for index in euler_records:
        start = max(i for i in range(index) if run.stages[i] == "centre")
        standing.append(float(w2(run.positions[start], control[index]) / w2(second[index], control[index])))
    ratios["standing still"] = _mean(standing)
    times = run.times[keep]
    report.metrics.update(chemotaxis_time_average_w2=averages, chemotaxis_time_average_floor=float(floor.mean()),
                          chemotaxis_w2_times=times.tolist(),
                          chemotaxis_w2={k: v.tolist() for k, v in series.items()},
                          chemotaxis_large_step_w2_over_floor=ratios,
                          chemotaxis_history_dependent_below_independent=
                          averages["history-dependent"] < averages["history-independent"],
                          chemotaxis_micro_step_ratio=run.micro_step_ratio)
    # scored as metrics: the one-step tests from control clouds are the checks ("steps" experiment)
    report.metrics["chemotaxis_history_dependent_over_floor"] = ratios["history-dependent"]
    line_plot(report.path("lot_chemotaxis_w2.png"), times, series, "t", "W2 to control",
              f"chemotaxis, N = {n}: re-initialization schemes (Fig. 7.5)",
              styles={k: ".-" for k in series})
    euler = [i for i, s in enumerate(run.stages) if s == "euler"][:2]
    figure, axes = plt.subplots(2, len(euler), figsize=(4 * len(euler), 5), squeeze=False)
    for column, index in enumerate(euler):
        bins = torch.linspace(float(control[index].min()) - 0.1, float(control[index].max()) + 0.1, 60).numpy()
        axes[0, column].hist(control[index, :, 0].numpy(), bins=bins, color="gray")
        axes[0, column].set_title(f"control t={float(run.times[index]):g}", fontsize=9)
        for scheme, result in results.items():
            axes[1, column].hist(result.positions[index, :, 0].numpy(), bins=bins, histtype="step", label=scheme)
        axes[1, column].set_title(f"LOT after large step {column + 1}", fontsize=9)
        axes[1, column].legend(fontsize=7)
    save_figure(figure, report.path("lot_chemotaxis_histograms.png"))


def _mean(values):
    return float(sum(values) / len(values))


def steps_experiment(report, quick):
    """Each large step as a one-step test from a control cloud (issue 22): box diffusion and chemotaxis, against
    the oracle Euler step and standing still from the same cloud, the paper's estimator on its own window
    (scripts/lot_steps.py holds the cases and the held-out drifts)."""
    from lot_steps import run_case, summarize

    sizes = [1000] if quick else [1000, 2000]
    for name in ("box", "chemotaxis"):
        rows = run_case(report, name, sizes, seeds=2 if quick else 5, paper_seeds=1)
        report.metrics.setdefault("steps", {})[name] = rows
        summarize(report, name, rows)


EXPERIMENTS = ("box", "adaptive", "chemotaxis", "steps")


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the 2-core machine is shared; recorded in the JSON)")
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated subset of {EXPERIMENTS}")
    parser.add_argument("--skip-chemotaxis", action="store_true", help="same as leaving chemotaxis out of --only")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"--only: unknown experiments {unknown}; expected a subset of {EXPERIMENTS}")
    if args.skip_chemotaxis and "chemotaxis" in chosen:
        chosen.remove("chemotaxis")
    torch.set_num_threads(args.threads)
    report = Report("reproduce_lot" if len(chosen) == len(EXPERIMENTS) else "reproduce_lot_" + "_".join(chosen), args)
    report.settings.update(threads=args.threads, experiments=chosen)
    start = time.perf_counter()
    seconds = {}
    for name, function in (("box", box_experiment), ("adaptive", adaptive_experiment),
                           ("chemotaxis", chemotaxis_experiment), ("steps", steps_experiment)):
        if name in chosen:
            begin = time.perf_counter()
            function(report, args.quick)
            seconds[name] = round(time.perf_counter() - begin, 1)
    report.metrics["seconds"] = time.perf_counter() - start
    report.metrics["seconds_per_experiment"] = seconds
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
