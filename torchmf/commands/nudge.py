"""Nudge a model towards density observations: a biased model of a registered system towards its own
reference run, or your model towards your own data (particle tracks or microscope images).

A registered system: the reference run uses the system's default parameters (or --reference-param);
the biased forecast starts from the same particles with --param overrides; observations are the
reference's particle snapshots every --obs-every recorded times, smoothed with --bandwidth. Writes
OUT/nudge.json (W2 / density errors vs time, settings) and OUT/nudge_error.png. With --output FILE
the nudged run of the first --strength is also written as a dataset. Under torchrun (WORLD_SIZE > 1)
the particles are sharded (grid backend; see torchmf.distributed).

Your own data: --observations FILE (particle data .h5/.npz/.csv, or an image stack .npz/.h5/.tif)
and --model (a registered system, an identified WSINDy model .json, a drift checkpoint .pt/.ckpt).
Units are never guessed: a track table needs --frame-dt; images take their frame times and pixel
size from the file (npz 'times'/'extent', ImageJ or OME TIFF metadata) or --frame-dt/--extent; the
units used and their source are printed. Raw microscope frames: a constant floor is refused until
--background auto|VALUE removes it (or --background 0 keeps it); --psf is the blur the images hold
(the nudging bandwidth must equal it: a wider --bandwidth blurs the images further). The last
--holdout frames (default 1 with 4 frames or more) are not assimilated; the verdict compares the
nudged and un-nudged misfits there, and a worse nudged run is said and exits with status 1 (so
does a run against images that still hold a floor: no claim either way). Without --strength the
strength comes from the data: a nudging rate lambda P / (e h^2) of 50 per frame interval. Forecast
particles leaving the nudging grid: --field-of-view (images) or --margin (particle data).
Writes OUT/nudge.json and OUT/nudge.png (misfit over time with the un-nudged baseline, density panels).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..data.files import check_output_path

EPILOG = """examples:
  a registered system, biased (a = 5) and nudged towards its reference run:
    torchmf nudge ou_linear --param a=5 --strength 100 --bandwidth 0.2 --out runs/nudge
    torchmf nudge double_well --param a=0.1 --strength 10 --strength 1000 --particles 2000
    torchrun --standalone --nproc-per-node 2 -m torchmf nudge ou_linear --param a=5 -o runs/nudged.h5

  your images (edges and times stored in the .npz) and an identified model:
    torchmf nudge --observations images.npz --model model.json --strength 50 --bandwidth 0.3 -o runs/nudged.h5

  raw microscope frames (ImageJ TIFF: frame interval and pixel size from its metadata):
    torchmf nudge --observations cells.tif --background auto --normalize --psf 1.5 --model model.json

  a TIFF without calibration, and track tables (frame numbers times --frame-dt):
    torchmf nudge --observations cells.tif --extent 0 640 0 480 --frame-dt 5 --psf 2 --model ou_linear
    torchmf nudge --observations tracks.csv --frame-dt 0.02 --model model.json --strength 20
"""
NAME = "nudge"
HELP = "assimilate smoothed density observations of a reference run into a biased particle model"
ORDER = 20


def add_arguments(parser) -> None:
    parser.add_argument("system", nargs="?", default=None,
                        help="registered system (ou_linear, double_well, lorenz_mf, ...); or --observations/--model")
    group = parser.add_argument_group("your own data (instead of a system's reference run)")
    group.add_argument("--observations", default=None,
                       help="particle data (.h5/.npz with positions+times, .csv tracks) or images (.npz/.h5/.tif)")
    group.add_argument("--model", default=None,
                       help="registered system name, identified WSINDy model .json, or drift checkpoint .pt/.ckpt")
    group.add_argument("--initial", default=None, help="initial particles: a particle file (its first frame)")
    group.add_argument("--extent", type=float, nargs="+", default=None, metavar="EDGE",
                       help="image edges x0 x1 [y0 y1 [z0 z1]] (default: the file's 'extent')")
    group.add_argument("--frame-dt", type=float, default=None,
                       help="time between frames when the file stores no times")
    group.add_argument("--indexing", choices=["xy", "ij"], default=None,
                       help="image axes: xy = (rows = y, columns = x), the numpy convention (default), ij")
    group.add_argument("--origin", choices=["lower", "upper"], default="lower",
                       help="row 0 at the smallest y (lower, default) or the largest (upper)")
    group.add_argument("--normalize", action="store_true", help="scale each image to mass 1")
    group.add_argument("--background", default=None, metavar="auto|VALUE",
                       help="constant floor of raw images (camera offset): 'auto' estimates it per frame, a number "
                       "is subtracted, 0 keeps the values (default: a floor is refused)")
    group.add_argument("--psf", type=float, default=None, metavar="SIGMA",
                       help="blur the images hold (PSF standard deviation, image length unit): the nudging "
                       "bandwidth (a wider --bandwidth blurs the images further)")
    group.add_argument("--holdout", type=int, default=None, metavar="K",
                       help="last K frames not assimilated, to judge the nudging on (default 1 with >= 4 frames)")
    group.add_argument("--field-of-view", action="store_true",
                       help="the images see only their window: particles outside feel no nudging")
    group.add_argument("--margin", type=float, default=None, metavar="M",
                       help="particle observations: widen the nudging grid by M beyond the observed particles "
                       "(default max(6 h, 25%% of their extent))")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="biased model parameter (YAML value), repeatable")
    parser.add_argument("--reference-param", action="append", default=[], metavar="KEY=VALUE",
                        help="reference model parameter, repeatable (default: the system's defaults)")
    parser.add_argument("--strength", action="append", type=float, default=[],
                        help="nudging strength lambda >= 0, repeatable (default 100; your own data: from the "
                        "data, a nudging rate of 50 per frame interval)")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="kernel bandwidth h > 0 (default 0.2; images: --psf, or this)")
    parser.add_argument("--obs-every", type=int, default=1, help="observe every k-th recorded time (default 1)")
    parser.add_argument("--interpolation", choices=["hold", "linear"], default="linear",
                        help="rule between observation times (default linear)")
    parser.add_argument("--noise", type=float, default=0.0, help="observation noise std on positions (default 0)")
    parser.add_argument("--backend", choices=["grid", "pairwise"], default="grid")
    parser.add_argument("--scheme", choices=["auto", "explicit", "implicit"], default="auto",
                        help="nudging sub-steps: explicit Euler from the stability bound, linearly implicit (grid "
                        "backend; any lambda at a few sub-steps per step) or auto (default: explicit up to 100 "
                        "sub-steps per step, implicit above)")
    parser.add_argument("--particles", type=int, default=None, help="particles N (default: the system's)")
    parser.add_argument("--t-end", type=float, default=None, help="final time (default: the system's)")
    parser.add_argument("--dt", type=float, default=None, help="time step (default: the system's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/nudge", help="output folder (default runs/nudge)")
    parser.add_argument("-o", "--output", default=None,
                        help="also write the nudged run of the first --strength as a dataset (.h5, .hdf5, .npz)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-plot", action="store_true", help="write no figure (default: OUT/nudge.png)")


def _params(items, option):
    from .._validation import parse_key_values

    return parse_key_values(items, option)


def _check_args(args):
    # a bad value is an error, never replaced by the default (--dt 0 used to run with the system's dt)
    for option, value in (("--dt", args.dt), ("--t-end", args.t_end)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{option}: expected a positive number, but got {value}")
    if args.margin is not None and not (math.isfinite(args.margin) and args.margin >= 0):
        raise ValueError(f"--margin: expected a non-negative number, but got {args.margin}")
    if args.particles is not None and args.particles < 1:
        raise ValueError(f"--particles: expected an integer >= 1, but got {args.particles}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, but got {args.seed}")
    if not math.isfinite(args.noise) or args.noise < 0:
        raise ValueError(f"--noise: expected a non-negative number, but got {args.noise}")
    for value in args.strength:
        if not math.isfinite(value):
            raise ValueError(f"--strength: expected a finite number, but got {value}")
    from ..distributed import check_device

    check_device(args.device, "--device")
    if args.particles is not None:  # sized before the (slow) imports and the reference run
        from .._memory import STATE_COPIES, check_fits

        check_fits("--particles", 4.0 * args.particles * 2 * STATE_COPIES, args.device,
                   f"nudging N={args.particles} particles (reference and forecast)")
    check_output_path("--out", args.out, folder=True)
    if args.output is not None:
        check_output_path("--output", args.output)
    if args.scheme == "implicit" and args.backend != "grid":
        raise ValueError(f"--scheme: 'implicit' needs --backend grid, but got --backend {args.backend}")
    if args.obs_every < 1:
        raise ValueError(f"--obs-every: expected an integer >= 1, but got {args.obs_every}")
    for value in args.strength:
        if value < 0:
            raise ValueError(f"--strength: expected a non-negative number, but got {value}")
    if args.bandwidth is not None and not (math.isfinite(args.bandwidth) and args.bandwidth > 0):
        raise ValueError(f"--bandwidth: expected a positive number, but got {args.bandwidth}")
    if args.output is not None and not args.output.endswith((".h5", ".hdf5", ".npz")):
        raise ValueError(f"--output: expected a .h5, .hdf5 or .npz file name, but got {args.output!r}")


def run(args) -> int:
    from .. import distributed

    _check_args(args)
    if args.observations is not None or args.model is not None:
        from .nudge_own_data import nudge_own_data

        return nudge_own_data(args, _params(args.param, "--param"))
    for option, value in (("--background", args.background), ("--psf", args.psf), ("--holdout", args.holdout),
                          ("--margin", args.margin)):
        if value is not None:
            raise ValueError(f"{option}: applies to --observations FILE (your own data), not to a system's "
                             f"reference run")
    if args.bandwidth is None:
        args.bandwidth = 0.2
    if args.system is None:
        raise ValueError("system: expected a registered system, or --observations FILE with --model, but got neither")
    _, size = distributed.setup(args.device)
    try:
        if size > 1:
            settings = sorted((k, repr(v)) for k, v in vars(args).items()
                              if k != "no_progress" and isinstance(v, (str, int, float, list, type(None))))
            distributed.check_same("nudge settings", settings)
        return _nudge(args, sharded=size > 1)
    finally:
        distributed.teardown()


def _nudge(args, sharded: bool) -> int:
    from .. import distributed, systems
    from ..data.files import write_json
    from ..metrics import w2
    from ..nudging import NudgedSDE, ParticleObservations
    from ..plots import line_plot
    from ..recipes import gather_trajectories, simulate_local

    rank, size = distributed.rank_and_size()
    device = distributed.check_device(args.device)
    progress = not args.no_progress and rank == 0
    strengths = args.strength or [100.0]
    reference_params = _params(args.reference_param, "--reference-param")
    biased_params = _params(args.param, "--param")
    reference_system = systems.get(args.system, **reference_params)
    biased_system = systems.get(args.system, **biased_params)
    if not hasattr(biased_system, "sde") and not hasattr(biased_system, "pic"):
        raise ValueError(f"system: {args.system!r} has no particle model to nudge from positions alone")
    if sharded and (getattr(biased_system, "sde", None) is None or args.backend != "grid"):
        raise ValueError(f"system: a sharded nudge needs an SDE system and --backend grid, but got {args.system!r} "
                         f"with --backend {args.backend}")
    base = getattr(biased_system, "sde", None) or biased_system.pic
    dt = reference_system.default_dt if args.dt is None else args.dt
    if rank == 0:  # a registered system has no unit but its own: said, not implied
        print(f"units: time and length in {args.system}'s model units (nondimensional, the system's own); time step "
              f"{dt:g} ({'--dt' if args.dt is not None else 'the system default'})")
    if sharded:
        recipe = {"system": args.system, "params": reference_params, "particles": args.particles,
                  "t_end": args.t_end, "dt": dt, "seed": args.seed}
        _, reference = simulate_local(recipe, device, progress)
        if base.interaction is not None:
            base.interaction.sharded = True
    else:
        reference = reference_system.simulate(n_particles=args.particles, t_end=args.t_end, dt=dt, seed=args.seed,
                                              device=device, progress=progress)
    times = reference.times.double()
    observed = reference.positions[:, ::args.obs_every]
    observations = ParticleObservations(observed, times=times[::args.obs_every], interpolation=args.interpolation,
                                        noise=args.noise, seed=args.seed + rank)
    x0 = reference.positions[:, 0]
    full_reference = gather_trajectories(reference, args.seed, "reference, sharded") if sharded else reference
    n_total = distributed.global_count(reference.n_particles, reference.positions.device)
    one_dimensional = reference.dim == 1
    metric = "w2" if one_dimensional or n_total <= 1000 else "mean_error"
    curves, summary, kept = {}, {}, None
    for strength in [0.0] + strengths:
        model = NudgedSDE(base, observations, args.bandwidth, strength, backend=args.backend, sharded=sharded,
                          scheme=args.scheme)
        # P = 1: reference seed, nudged seed + 1; rank r of P: reference seed + r, nudged seed + P + r
        part = model.simulate(x0, times, dt, seed=args.seed + size + rank, progress=progress)
        run = gather_trajectories(part, args.seed, "nudged, sharded") if sharded else part
        if rank != 0:
            continue
        if kept is None and strength == strengths[0]:
            kept = (strength, run)
        reference_positions = full_reference.positions[0].to(run.positions)
        if metric == "w2":
            error = w2(run.positions[0], reference_positions).double().cpu()
        else:
            error = (run.positions[0].mean(1) - reference_positions.mean(1)).norm(dim=-1).double().cpu()
        label = "biased" if strength == 0 else f"lambda={strength:g}"
        curves[label] = error
        summary[label] = {"final": float(error[-1]), "time_averaged": float(error.mean()),
                          "substeps_last_step": model.last_substeps}
    if rank != 0:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ylabel = "W2 to the reference" if metric == "w2" else "|mean - reference mean|"
    figure = None if args.no_plot else line_plot(out / "nudge_error.png", times.cpu(), curves, "t", ylabel,
                                                 f"{args.system}: nudged vs biased", logy=True)
    result = {"system": args.system, "biased_params": biased_params, "reference_params": reference_params,
              "strengths": strengths, "bandwidth": args.bandwidth, "obs_every": args.obs_every,
              "interpolation": args.interpolation, "noise": args.noise, "backend": args.backend, "scheme": args.scheme,
              "particles": n_total, "dt": dt, "seed": args.seed, "metric": metric, "summary": summary,
              "times": times.tolist(), "errors": {k: v.tolist() for k, v in curves.items()},
              "figures": [figure.name] if figure else [], "device": str(device), "processes": size}
    if args.output is not None:
        strength, run = kept
        run.meta.update(nudging_strength=strength, processes=size)
        run.save(Path(args.output))
        result["dataset"] = str(args.output)
        print(f"wrote {args.output}: {run}")
    write_json(out / "nudge.json", result)
    for label, values in summary.items():
        print(f"{label:>14}: final {metric} {values['final']:.4f}, time-averaged {values['time_averaged']:.4f}")
    print(f"wrote {out / 'nudge.json'}" + (f" and {figure}" if figure else ""))
    return 0
