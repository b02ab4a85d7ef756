"""Reproduce the LOT projective-integration experiments (LOT paper, sections 6 and 7).

Writes OUT/reproduce_lot.json and PNGs: W2 to the control run vs time (Fig. 6.5), scatter panels
after the first and last large steps, the particle-wise baseline panel (Fig. 6.9), the LOT/PCA
trajectory (Fig. 6.6), an adaptive-H run, and chemotaxis with both re-initialization schemes
(Figs. 7.2 and 7.5).

    python scripts/reproduce_lot.py --out runs            # Table 6.1 with N = 2,000; chemotaxis N = 10,000
    python scripts/reproduce_lot.py --out runs --quick    # small sizes, same checks
"""
from __future__ import annotations

import sys
import time

import torch

from _report import Report, standard_parser

from torchmf import systems
from torchmf.lot import AdaptiveStep, ProjectiveIntegrator, SystemSimulator, lot_embedding, pca, w2_distance
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


def box_experiment(report, quick):
    protocol = box_protocol(quick)
    report.settings["box"] = protocol
    box = systems.get("box_diffusion")
    n = protocol["particles"]
    lot = integrator(protocol)
    start = time.perf_counter()
    run = lot.run(SystemSimulator(box, n, seed=1))
    report.metrics["box_lot_seconds"] = time.perf_counter() - start
    baseline = integrator(protocol, method="particle").run(SystemSimulator(box, n, seed=1))
    control = lot.control(SystemSimulator(box, n, seed=2), run.times)
    second = lot.control(SystemSimulator(box, n, seed=3), run.times)
    keep = [i for i, s in enumerate(run.stages) if s in ("initial", "start-up", "centre", "euler", "burn-in",
                                                          "recovery")]
    times = run.times[keep]
    error = torch.stack([w2_distance(run.positions[i], control[i]) for i in keep])
    floor = torch.stack([w2_distance(second[i], control[i]) for i in keep])
    euler = first_index(run.stages, "euler")
    baseline_error = float(w2_distance(baseline.positions[euler], control[euler]))
    lot_error = float(w2_distance(run.positions[euler], control[euler]))
    final = float(error[-1])
    final_floor = float(floor[-1])
    report.metrics.update(box_micro_steps=run.micro_steps, box_control_steps=run.control_steps,
                          box_micro_step_ratio_total=run.micro_step_ratio, box_cycle_ratio=run.cycle_ratio,
                          box_final_w2=final, box_final_floor=final_floor,
                          box_first_step_w2_lot=lot_error, box_first_step_w2_particle=baseline_error,
                          box_w2_times=times.tolist(), box_w2=error.tolist(), box_floor=floor.tolist())
    report.check("2-D diffusion (Table 6.1): micro steps per cycle / plain run", round(run.cycle_ratio, 4),
                 "<= 1/3 (whole run incl. S and R: %.3f)" % run.micro_step_ratio, run.cycle_ratio <= 1 / 3 + 1e-12)
    report.check("2-D diffusion: W2(LOT, control) after final recovery / W2(control, control)",
                 round(final / final_floor, 3), "<= 2", final <= 2 * final_floor)
    report.check("2-D diffusion: particle-wise baseline W2 / LOT W2 after the first large step",
                 round(baseline_error / lot_error, 3), ">= 3", baseline_error >= 3 * lot_error)

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
                    f"particle-wise t={t:g}": baseline.positions[euler]},
                   "first large step: OT velocity vs particle-wise velocity (Fig. 6.9)", limits=limits)
    pca_figure(report, run, control, keep, box, quick)
    adaptive_experiment(report, quick, protocol, box)


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


def adaptive_experiment(report, quick, protocol, box):
    n = protocol["particles"]
    t_end = 2000.0  # Table 6.1's T, also in --quick: the fixed start-up and recovery need a long run to amortize
    adaptive = AdaptiveStep(tolerance=0.5, min_step=protocol["step"], max_step=t_end / 2)
    # n_steps is only a cap in the adaptive mode: the step lengths decide how many cycles fit
    lot = integrator(dict(protocol, n_steps=64), adaptive=adaptive, t_end=t_end)
    run = lot.run(SystemSimulator(box, n, seed=11))
    control = lot.control(SystemSimulator(box, n, seed=12), run.times[-1:])
    second = lot.control(SystemSimulator(box, n, seed=13), run.times[-1:])
    final = float(w2_distance(run.positions[-1], control[-1]))
    floor = float(w2_distance(second[-1], control[-1]))
    report.metrics.update(adaptive_micro_step_ratio=run.micro_step_ratio, adaptive_final_w2=final,
                          adaptive_final_floor=floor, adaptive_steps=[s["H"] for s in run.large_steps])
    passed = run.micro_step_ratio <= 0.2 and final <= 2 * floor
    report.check("adaptive H: micro steps / plain run (final W2 <= 2x floor: %.3f vs %.3f)" % (final, 2 * floor),
                 round(run.micro_step_ratio, 4), "<= 1/5 with final W2 <= 2x floor", passed)


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
    control = integrator(protocol).control(SystemSimulator(model, n, seed=22), run.times)
    keep = [i for i, s in enumerate(run.stages) if s in ("centre", "euler", "burn-in", "recovery")]
    series, averages = {}, {}
    for scheme, result in results.items():
        values = torch.stack([w2_distance(result.positions[i], control[i]) for i in keep])
        series[scheme] = values
        averages[scheme] = float(values.mean())
    times = run.times[keep]
    report.metrics.update(chemotaxis_time_average_w2=averages, chemotaxis_w2_times=times.tolist(),
                          chemotaxis_w2={k: v.tolist() for k, v in series.items()},
                          chemotaxis_micro_step_ratio=run.micro_step_ratio)
    report.check("chemotaxis: time-averaged W2, history-dependent vs history-independent",
                 [round(averages["history-dependent"], 5), round(averages["history-independent"], 5)],
                 "history-dependent < history-independent",
                 averages["history-dependent"] < averages["history-independent"])
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


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the 2-core machine is shared; recorded in the JSON)")
    parser.add_argument("--skip-chemotaxis", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = Report("reproduce_lot", args)
    report.settings["threads"] = args.threads
    start = time.perf_counter()
    box_experiment(report, args.quick)
    if not args.skip_chemotaxis:
        chemotaxis_experiment(report, args.quick)
    report.metrics["seconds"] = time.perf_counter() - start
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
