"""LOT projective integration of a registered system, compared with a plain (control) run.

Examples:
    torchmf lot box_diffusion --particles 2000                     # Table 6.1 protocol
    torchmf lot chemotaxis --particles 2000 --k 80 --step 95 --burn-in 100 --start-up 200 \\
        --n-steps 19 --recovery 0 --reinit history-dependent
    torchmf lot box_diffusion --particles 1000 --adaptive-tolerance 0.5 --t-end 2000
    torchmf lot --snapshots cells.npz --horizon 2.5 -o runs/forecast.npz   # your own snapshots, no simulator

Writes OUT/lot_<system>.json (times, stages, W2 to the control run and to a second control run,
micro-step counts) and OUT/lot_<system>_w2.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..runs import add_table_arguments

NAME = "lot"
HELP = "LOT projective integration of a registered system (large Euler steps from transport maps)"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", nargs="?", default=None,
                        help="registered system name (e.g. box_diffusion, chemotaxis); or give --snapshots")
    parser.add_argument("--snapshots", default=None,
                        help="extrapolate your own snapshots instead: .h5/.npz (torchmf or plain positions/times) "
                             "or a .csv of tracks; the last 2k+1 (uniformly spaced) frames are used")
    parser.add_argument("--horizon", type=float, action="append", default=[],
                        help="with --snapshots: time beyond the last snapshot, repeatable")
    parser.add_argument("--order", type=int, choices=[1, 2], default=1,
                        help="with --snapshots: 1 = LOT Euler step, 2 = with the curvature term (needs exact maps)")
    parser.add_argument("-o", "--output", default=None, help="with --snapshots: write the forecast (.h5/.npz)")
    add_table_arguments(parser)
    parser.add_argument("--particles", type=int, default=None, help="particles N (default 2000; not with --snapshots)")
    parser.add_argument("--k", type=int, default=None,
                        help="half window (2k+1 snapshots; default 80, growing to 4k while the velocity is too noisy "
                             "for the step; with --snapshots: the shortest window at the end of the series whose "
                             "velocity is known to 25%%)")
    parser.add_argument("--max-k", type=int, default=None, help="the most the half window may grow to (default 4k)")
    parser.add_argument("--estimator", choices=["regression", "centred-average"], default="regression",
                        help="LOT velocity: least-squares slope over the lags, smoothed, with its error bar "
                             "(default), or the LOT paper's section 5.2 average")
    parser.add_argument("--insignificant", choices=["hold", "simulate", "jump"], default="hold",
                        help="when the velocity is inside its noise: hold the cloud (default), simulate the step, "
                             "or jump anyway")
    parser.add_argument("--no-plot", action="store_true", help="with --snapshots: no forecast figure")
    parser.add_argument("--step", type=float, default=85.0, help="large step H")
    parser.add_argument("--burn-in", type=float, default=30.0, help="burn-in H_R after each large step")
    parser.add_argument("--start-up", type=float, default=30.0, help="start-up time S")
    parser.add_argument("--n-steps", type=int, default=16, help="large steps N_T (the most, when adaptive)")
    parser.add_argument("--recovery", type=float, default=50.0, help="final recovery R")
    parser.add_argument("--method", default="auto", help="transport backend (torchmf.transport.METHODS) or 'particle'")
    parser.add_argument("--blur", type=float, help="Sinkhorn blur")
    parser.add_argument("--reinit", choices=["keep", "history-dependent", "history-independent"], default="keep",
                        help="hidden-state re-initialization after each large step")
    parser.add_argument("--adaptive-tolerance", type=float, help="adaptive H with this local W2 tolerance")
    parser.add_argument("--t-end", type=float, help="final time (adaptive mode)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="system parameter")
    parser.add_argument("--seed", type=int, default=0, help="seed of the projective run (controls: seed+1, seed+2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", default="runs/lot", help="output folder (default runs/lot)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> int:
    import torch

    from .. import systems
    from .._memory import STATE_COPIES, check_fits
    from .._validation import parse_key_values
    from ..data.files import check_output_path, write_json
    from ..lot import AdaptiveStep, ProjectiveIntegrator, SystemSimulator, w2_distance
    from ..plots import line_plot

    if args.threads is not None:
        if args.threads < 1:  # 0 used to be ignored silently, negative ones ended in a traceback
            raise ValueError(f"--threads: expected an integer >= 1, but got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.particles is not None and args.particles < 1:
        raise ValueError(f"--particles: expected an integer >= 1, but got {args.particles}")
    if args.snapshots is not None:
        return _extrapolate_snapshots(args)
    if args.system is None:
        raise ValueError("system: expected a registered system name or --snapshots FILE, but got neither")
    args.k = 80 if args.k is None else args.k
    args.particles = 2000 if args.particles is None else args.particles
    for option, value in (("--step", args.step), ("--burn-in", args.burn_in), ("--start-up", args.start_up),
                          ("--recovery", args.recovery)):
        # named here as the user typed them (the integrator's own messages say H, burn_in, ...)
        if not value == value or value < 0 or (option == "--step" and value == 0):
            raise ValueError(f"{option}: expected a {'positive' if option == '--step' else 'non-negative'} number "
                             f"of model time units, but got {value}")
    check_output_path("--out", args.out, folder=True)
    params = parse_key_values(args.param, "--param")
    system = systems.get(args.system, **params)
    # the projective run, two controls and the 2k+1 snapshot window, each (N, d): sized before any run
    check_fits("--particles", 4.0 * args.particles * system.dim * (2 * args.k + 1 + 3 * STATE_COPIES),
               "cpu", f"LOT with N={args.particles} particles and k={args.k}")
    adaptive = None
    if args.adaptive_tolerance is not None:
        adaptive = AdaptiveStep(args.adaptive_tolerance, min_step=args.step, max_step=(args.t_end or args.step) / 2)
    integrator = ProjectiveIntegrator(k=args.k, step=args.step, burn_in=args.burn_in, start_up=args.start_up,
                                      n_steps=args.n_steps, recovery=args.recovery, method=args.method,
                                      blur=args.blur, reinit=None if args.reinit == "keep" else args.reinit,
                                      adaptive=adaptive, t_end=args.t_end, progress=not args.no_progress,
                                      estimator=args.estimator, max_k=args.max_k, insignificant=args.insignificant)
    result = integrator.run(SystemSimulator(system, args.particles, seed=args.seed))
    control = integrator.control(SystemSimulator(system, args.particles, seed=args.seed + 1), result.times)
    second = integrator.control(SystemSimulator(system, args.particles, seed=args.seed + 2), result.times)
    keep = [i for i, stage in enumerate(result.stages) if stage != "window"]
    error = [float(w2_distance(result.positions[i], control[i])) for i in keep]
    floor = [float(w2_distance(second[i], control[i])) for i in keep]
    times = [float(result.times[i]) for i in keep]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"system": args.system, "params": system.parameters(), "particles": args.particles,
               "protocol": {key: getattr(args, key) for key in ("k", "step", "burn_in", "start_up", "n_steps",
                                                                "recovery", "method", "blur", "reinit")},
               "micro_steps": result.micro_steps, "control_steps": result.control_steps,
               "micro_step_ratio": result.micro_step_ratio, "cycle_ratio": result.cycle_ratio,
               "large_steps": result.large_steps, "times": times,
               "stages": [result.stages[i] for i in keep], "w2_to_control": error, "w2_control_to_control": floor}
    path = write_json(out / f"lot_{args.system}.json", summary)
    line_plot(out / f"lot_{args.system}_w2.png", times, {"W2(LOT, control)": error, "W2(control, control')": floor},
              "t", "W2", f"{args.system}: LOT projective run, N = {args.particles}")
    for step in result.large_steps:
        if "standard_error" in step:
            print(f"large step at t = {step['t0']:g}: H = {step['H']:g}, window k = {step['k']}, "
                  f"speed {step['speed']:.3g} +- "
                  f"{step['standard_error']:.2g}, {step['action']}")
    print(f"wrote {path} and {out / f'lot_{args.system}_w2.png'}: micro-step ratio {result.micro_step_ratio:.3f} "
          f"(per cycle {result.cycle_ratio:.3f}), final W2 {error[-1]:.4f} (control vs control {floor[-1]:.4f}); "
          f"times and lengths in the system's model units")
    return 0


def _extrapolate_snapshots(args) -> int:
    """``--snapshots FILE --horizon H``: one LOT step from the user's frames (:func:`torchmf.lot.extrapolate`)."""
    import torch

    from ..data import Trajectories, read_particle_data
    from ..data.files import check_output_path
    from ..lot import extrapolate

    if args.system is not None:
        raise ValueError(f"system: give either a registered system or --snapshots, but got both ({args.system!r})")
    if args.particles is not None:
        raise ValueError(f"--particles: the snapshots fix the particles; it applies to a simulated system only, "
                         f"but got --particles {args.particles} with --snapshots")
    if not args.horizon:
        raise ValueError("--horizon: expected the time beyond the last snapshot (repeatable), but got none")
    if args.output:
        check_output_path("-o/--output", args.output)
    check_output_path("--out", args.out, folder=True)
    data = read_particle_data(args.snapshots, args)
    forecast, info = extrapolate(data, horizon=list(args.horizon), k=args.k, order=args.order, method=args.method,
                                 blur=args.blur, return_info=True, progress=not args.no_progress)  # (H, N, d)
    last = float(data.times[-1])
    verdict = "significant" if info["significant"] else "NOT significant (inside its noise: the forecast is unreliable)"
    print(f"times in the units of {args.snapshots}'s time column (frame spacing {float(data.times.diff().mean()):g}); "
          f"lengths in its coordinate units")
    print(f"window: the last {2 * info['k'] + 1} frames, centred {info['centre_offset']:g} time units before the last "
          f"frame; velocity speed {info['speed']:.4g} +- {info['standard_error']:.2g} ({verdict}); steps from the "
          f"centre: {', '.join(f'{v:g}' for v in info['steps'])}")
    result = Trajectories(forecast, times=torch.tensor([last + h for h in args.horizon], dtype=torch.float64),
                          meta={"source": str(args.snapshots), "method": "lot.extrapolate", "order": args.order,
                                "horizons": list(args.horizon), "window_k": info["k"],
                                "window_centre_before_last": info["centre_offset"],
                                "speed": info["speed"], "standard_error": info["standard_error"]})
    for index, horizon in enumerate(args.horizon):
        cloud = forecast[index]
        print(f"t = {last + horizon:g}: mean {[round(v, 4) for v in cloud.mean(0).tolist()]}, "
              f"std {[round(v, 4) for v in cloud.std(0).tolist()]}")
    figure = None if args.no_plot else _forecast_figure(args, data, forecast, last)
    if args.output:
        print(f"wrote {result.save(args.output)}: {result}" + (f"; figure {figure}" if figure else ""))
    elif figure:
        print(f"wrote {figure}")
    return 0


def _forecast_figure(args, data, forecast, last):
    """The last frame and each forecast side by side (2-D scatter; histograms of the first coordinate otherwise)."""
    from ..plots import plt, save_figure, scatter_panels

    frame = data.positions[0, -1]
    if data.mask is not None:
        frame = frame[data.mask[0, -1]]
    path = Path(args.output).with_suffix(".png") if args.output else Path(args.out) / "lot_forecast.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = {f"last frame t = {last:g}": frame}
    panels.update({f"forecast t = {last + h:g}": cloud for h, cloud in zip(args.horizon, forecast)})
    if frame.shape[-1] == 2:
        return scatter_panels(path, panels, "LOT forecast from your snapshots", xlabel="x1", ylabel="x2")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for label, cloud in panels.items():
        axis.hist(cloud[:, 0].numpy(), bins=50, histtype="step", density=True, label=label)
    axis.set_xlabel("x1")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    return save_figure(figure, path)
