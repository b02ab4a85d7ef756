"""Nudge a biased model of a registered system towards smoothed density observations of a reference run.

The reference run uses the system's default parameters (or --reference-param); the biased
forecast starts from the same particles with --param overrides; observations are the
reference's particle snapshots every --obs-every recorded times, smoothed with --bandwidth.
Writes OUT/nudge.json (W2 / density errors vs time, settings) and PNG figures.

Examples:
    torchmf nudge ou_linear --param a=5 --strength 100 --bandwidth 0.2 --out runs/nudge
    torchmf nudge double_well --param a=0.1 --strength 10 --strength 1000 --particles 2000
"""
from __future__ import annotations

from pathlib import Path

NAME = "nudge"
HELP = "assimilate smoothed density observations of a reference run into a biased particle model"
ORDER = 20


def add_arguments(parser) -> None:
    parser.add_argument("system", help="registered system (ou_linear, double_well, lorenz_mf, ...)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="biased model parameter (YAML value), repeatable")
    parser.add_argument("--reference-param", action="append", default=[], metavar="KEY=VALUE",
                        help="reference model parameter, repeatable (default: the system's defaults)")
    parser.add_argument("--strength", action="append", type=float, default=[],
                        help="nudging strength lambda >= 0, repeatable (default 100)")
    parser.add_argument("--bandwidth", type=float, default=0.2, help="kernel bandwidth h > 0 (default 0.2)")
    parser.add_argument("--obs-every", type=int, default=1, help="observe every k-th recorded time (default 1)")
    parser.add_argument("--interpolation", choices=["hold", "linear"], default="linear",
                        help="rule between observation times (default linear)")
    parser.add_argument("--noise", type=float, default=0.0, help="observation noise std on positions (default 0)")
    parser.add_argument("--backend", choices=["grid", "pairwise"], default="grid")
    parser.add_argument("--particles", type=int, default=None, help="particles N (default: the system's)")
    parser.add_argument("--t-end", type=float, default=None, help="final time (default: the system's)")
    parser.add_argument("--dt", type=float, default=None, help="time step (default: the system's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/nudge", help="output folder (default runs/nudge)")
    parser.add_argument("--no-progress", action="store_true")


def _params(items, option):
    import yaml

    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option}: expected KEY=VALUE, but got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(value)
    return params


def run(args) -> int:
    import torch

    from .. import systems
    from .._io import write_json
    from ..metrics import w2
    from ..nudging import NudgedSDE, ParticleObservations
    from ..plots import line_plot

    if args.obs_every < 1:
        raise ValueError(f"--obs-every: expected an integer >= 1, but got {args.obs_every}")
    strengths = args.strength or [100.0]
    for value in strengths:
        if value < 0:
            raise ValueError(f"--strength: expected a non-negative number, but got {value}")
    if not args.bandwidth > 0:
        raise ValueError(f"--bandwidth: expected a positive number, but got {args.bandwidth}")
    reference_system = systems.get(args.system, **_params(args.reference_param, "--reference-param"))
    biased_system = systems.get(args.system, **_params(args.param, "--param"))
    if not hasattr(biased_system, "sde") and not hasattr(biased_system, "pic"):
        raise ValueError(f"system: {args.system!r} has no particle model to nudge from positions alone")
    base = getattr(biased_system, "sde", None) or biased_system.pic
    dt = args.dt or reference_system.default_dt
    reference = reference_system.simulate(n_particles=args.particles, t_end=args.t_end, dt=dt, seed=args.seed,
                                          progress=not args.no_progress)
    times = reference.times.double()
    observed = reference.positions[:, ::args.obs_every]
    observations = ParticleObservations(observed, times=times[::args.obs_every], interpolation=args.interpolation,
                                        noise=args.noise, seed=args.seed)
    x0 = reference.positions[:, 0]
    one_dimensional = reference.dim == 1
    metric = "w2" if one_dimensional or reference.n_particles <= 1000 else "mean_error"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves, summary = {}, {}
    for strength in [0.0] + strengths:
        model = NudgedSDE(base, observations, args.bandwidth, strength, backend=args.backend)
        run = model.simulate(x0, times, dt, seed=args.seed + 1, progress=not args.no_progress)
        if metric == "w2":
            error = w2(run.positions[0], reference.positions[0]).double()
        else:
            error = (run.positions[0].mean(1) - reference.positions[0].mean(1)).norm(dim=-1).double()
        label = "biased" if strength == 0 else f"lambda={strength:g}"
        curves[label] = error
        summary[label] = {"final": float(error[-1]), "time_averaged": float(error.mean()),
                          "substeps_last_step": model.last_substeps}
    ylabel = "W2 to the reference" if metric == "w2" else "|mean - reference mean|"
    figure = line_plot(out / "nudge_error.png", times, curves, "t", ylabel, f"{args.system}: nudged vs biased",
                       logy=True)
    result = {"system": args.system, "biased_params": _params(args.param, "--param"),
              "reference_params": _params(args.reference_param, "--reference-param"), "strengths": strengths,
              "bandwidth": args.bandwidth, "obs_every": args.obs_every, "interpolation": args.interpolation,
              "noise": args.noise, "backend": args.backend, "particles": reference.n_particles, "dt": dt,
              "seed": args.seed, "metric": metric, "summary": summary,
              "times": times.tolist(), "errors": {k: v.tolist() for k, v in curves.items()},
              "figures": [figure.name], "device": str(torch.device("cpu"))}
    write_json(out / "nudge.json", result)
    for label, values in summary.items():
        print(f"{label:>14}: final {metric} {values['final']:.4f}, time-averaged {values['time_averaged']:.4f}")
    print(f"wrote {out / 'nudge.json'} and {figure}")
    return 0
