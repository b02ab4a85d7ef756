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
    parser.add_argument("--particles", type=int, default=2000, help="particles N (default 2000)")
    parser.add_argument("--k", type=int, default=None,
                        help="centred differences averaged (2k+1 snapshots; default 80, with --snapshots all frames)")
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
    if args.particles < 1:
        raise ValueError(f"--particles: expected an integer >= 1, but got {args.particles}")
    if args.snapshots is not None:
        return _extrapolate_snapshots(args)
    if args.system is None:
        raise ValueError("system: expected a registered system name or --snapshots FILE, but got neither")
    args.k = 80 if args.k is None else args.k
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
                                      adaptive=adaptive, t_end=args.t_end, progress=not args.no_progress)
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
    print(f"wrote {path}: micro-step ratio {result.micro_step_ratio:.3f} (per cycle {result.cycle_ratio:.3f}), "
          f"final W2 {error[-1]:.4f} (control vs control {floor[-1]:.4f})")
    return 0


def _extrapolate_snapshots(args) -> int:
    """``--snapshots FILE --horizon H``: one LOT step from the user's frames (:func:`torchmf.lot.extrapolate`)."""
    import torch

    from ..data import Trajectories, read_particle_data
    from ..lot import extrapolate

    if args.system is not None:
        raise ValueError(f"system: give either a registered system or --snapshots, but got both ({args.system!r})")
    if not args.horizon:
        raise ValueError("--horizon: expected the time beyond the last snapshot (repeatable), but got none")
    data = read_particle_data(args.snapshots, args)
    forecast = extrapolate(data, horizon=list(args.horizon), k=args.k, order=args.order, method=args.method,
                           blur=args.blur)  # (H, N, d)
    last = float(data.times[-1])
    times = torch.tensor([last + h for h in args.horizon], dtype=torch.float64)
    result = Trajectories(forecast, times, {"source": str(args.snapshots), "method": "lot.extrapolate",
                                            "order": args.order, "horizons": list(args.horizon)})
    for index, horizon in enumerate(args.horizon):
        cloud = forecast[index]
        print(f"t = {last + horizon:g}: mean {[round(v, 4) for v in cloud.mean(0).tolist()]}, "
              f"std {[round(v, 4) for v in cloud.std(0).tolist()]}")
    if args.output:
        print(f"wrote {result.save(args.output)}: {result}")
    return 0
