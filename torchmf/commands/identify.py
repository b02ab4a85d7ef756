"""Identify the mean-field equation (interaction K, potential V, diffusivity sigma) from a particle dataset by WSINDy.

Prints the data, the units it used and where they came from, the equation, and one verdict line
(reliable, or the reasons it is not: unstable terms, cropped mass, ill-conditioning, poor held-out
residual). With --json it writes the model (coefficients, equation, verdict, inclusion
probabilities) and, next to it, a figure (terms; identified model re-simulated against the
observed densities) unless --no-plot.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..data.files import check_output_path
from ..runs import TABLE_SUFFIXES, add_table_arguments

NAME = "identify"
HELP = "identify the mean-field PDE (K, V, sigma) of a particle dataset by weak-form sparse regression (WSINDy)"
ORDER = 40
EPILOG = """examples:

  a dataset written by `torchmf simulate` (times in the file):
      torchmf identify runs/qanr.h5 --json runs/qanr_model.json        # also writes runs/qanr_model.png

  the paper's library and test functions, the paper's MSTLS:
      torchmf identify runs/qanr.h5 --library qanr_1d --test-functions qanr_1d --selection mstls

  a trackpy-style table whose time column counts frames (0.1 s between frames):
      torchmf identify tracks.csv --id particle --time frame --columns x y --frame-dt 0.1

  your own library, keep the confinement terms in, a larger verdict:
      torchmf identify data.h5 --library my_library.yaml --exempt "V:x1^2*x2^0" "V:x1^0*x2^2" --ensemble 50

  library YAML format: docs/wsindy.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="particle data: .h5/.hdf5/.npz (written by `torchmf simulate`, or plain with "
                        "arrays 'positions' (M, L, N, d) or (L, N, d), NaN = lost, and 'times' (L,)) or a "
                        "long-format .csv of tracks (one row per particle and frame)")
    add_table_arguments(parser)
    parser.add_argument("--library", default="default",
                        help="library preset (default, local_2d, qanr_1d, keller_segel_2d) or a .yaml/.json spec "
                             "(format: docs/wsindy.md)")
    parser.add_argument("--test-functions", default=None,
                        help="test-function preset (local_2d, qanr_1d, keller_segel_2d); default: changepoint rule")
    parser.add_argument("--grid-shape", type=int, default=None, help="grid points per axis (default 256 in 1-D, 128)")
    parser.add_argument("--grid-rule", default="union", choices=["union", "intersection"],
                        help="default grid: union (covers every particle; default) or intersection (the authors' "
                             "rule: cut to mean +- 3 sd, crops the tails)")
    parser.add_argument("--selection", default="l0", choices=["l0", "l0_exact", "mstls", "stability", "least_squares"],
                        help="how terms are selected: l0 (best subsets, size by held-out time windows; default), "
                             "l0_exact (every subset), mstls (the paper's MSTLS), stability (bagged MSTLS), "
                             "least_squares (every term)")
    parser.add_argument("--max-terms", type=int, default=8, help="most selected terms the l0 selections consider")
    parser.add_argument("--exempt", nargs="+", default=None, metavar="TERM",
                        help="term names never thresholded and kept >= 0 (default: the constant diffusion terms); "
                             "names as printed in the model JSON's 'terms'")
    parser.add_argument("--ensemble", type=int, default=20,
                        help="row resamples of the verdict's inclusion probabilities (default 20; 0: none)")
    parser.add_argument("--halves", action=argparse.BooleanOptionalAction, default=True,
                        help="the verdict also identifies on each half of the particles (default on; --no-halves "
                             "saves two weak systems, about 2/3 of the time in 2-D)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="add extrinsic measurement noise of this ratio before identifying (robustness checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement noise and the resamples")
    parser.add_argument("--json", default=None, help="write the model (coefficients, equation, verdict) here")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                        help="write the figure next to --json (default: on when --json is given)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def units(args, path: Path) -> str:
    """Where the time and length units come from; refuses a frame-number column without --frame-dt."""
    if path.suffix.lower() in TABLE_SUFFIXES:
        length = f"the table's coordinate columns ({' '.join(args.columns) if args.columns else 'x y z as present'})"
        if args.frame_dt is not None:
            time = f"column {args.time!r} x --frame-dt {args.frame_dt:g}"
        elif "frame" in args.time.lower():
            raise ValueError(f"--frame-dt: the table's time column {args.time!r} counts frames; pass --frame-dt (the "
                             f"time between frames, in your time unit) or name a time column with --time")
        else:
            time = f"the table's time column {args.time!r}"
        return f"time from {time}; length from {length} (the coefficients are in these units)"
    return ("time from the file's 'times'; length from the file's 'positions' (the coefficients are in the file's "
            "units)")


def run(args) -> int:
    from .. import wsindy
    from ..data import read_particle_data

    from ..distributed import check_device

    device = check_device(args.device, "--device")
    path = Path(args.data)
    unit_line = units(args, path)
    if args.plot and not args.json:
        raise ValueError("--plot: the figure is written next to --json; pass --json PATH")
    if args.json:
        check_output_path("--json", args.json)
    if args.ensemble < 0:
        raise ValueError(f"--ensemble: expected an integer >= 0, but got {args.ensemble}")
    data = read_particle_data(path, args).to(device)
    if args.grid_shape is not None:  # the (L, G^d) histogram and its weak-form products, sized before building
        from .._memory import check_fits

        if args.grid_shape < 2:
            raise ValueError(f"--grid-shape: expected an integer >= 2, but got {args.grid_shape}")
        check_fits("--grid-shape", 8.0 * 4 * data.n_experiments * data.n_times * float(args.grid_shape) ** data.dim,
                   device, f"a {args.grid_shape}^{data.dim} histogram of {data.n_times} times")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise ValueError(f"--noise: expected a finite non-negative ratio, but got {args.noise}")
    if args.noise:
        if data.mask is not None:  # the noise helper scales by the RMS of complete data
            raise ValueError(f"--noise: adding synthetic measurement noise needs complete tracks, but {args.data} has "
                             f"{int((~data.mask).sum())} missing entries (they are already real data)")
        data = wsindy.add_measurement_noise(data, args.noise, seed=args.seed)
    print(f"# units: {unit_line}", flush=True)
    model = wsindy.identify(data, args.library, test_functions=args.test_functions, grid_shape=args.grid_shape,
                            grid_rule=args.grid_rule, selection=args.selection, max_terms=args.max_terms,
                            exempt=args.exempt, ensemble=args.ensemble, ensemble_seed=args.seed,
                            halves=args.halves, progress=sys.stderr.isatty())
    info = model.info
    missing = "" if data.mask is None else f" ({int((~data.mask).sum())} missing entries, masked)"
    print(f"# {args.data}: M={data.n_experiments}, L={data.n_times}, N={data.n_particles}, d={data.dim}{missing}; "
          f"library {model.library.name!r} ({len(model.library)} terms), G {info['size_G'][0]}x{info['size_G'][1]}, "
          f"cond {info['condition_number']:.3g}, {args.selection} selection, {info['seconds']['total']:.2f} s")
    print(model.equation())
    print(verdict_line(info))
    if args.json:
        written = model.save(args.json)
        line = f"wrote {written}"
        if args.plot is not False:
            from ..wsindy.figure import identification_figure

            figure = identification_figure(Path(args.json).with_suffix(".png"), model, data.to("cpu"), seed=args.seed,
                                           progress=sys.stderr.isatty())
            line += f" and the figure {figure}"
        print(line)
    return 0


def verdict_line(info: dict) -> str:
    """One line: ``verdict: reliable (...)`` or ``verdict: NOT reliable: reason; reason``."""
    if info.get("reliable"):
        probabilities = info.get("inclusion_probabilities")
        stability = "" if probabilities is None else f"{info['ensemble']['resamples']} resamples agree, "
        return f"verdict: reliable ({stability}held-out residual {info['held_out_residual']:.3g})"
    return "verdict: NOT reliable: " + "; ".join(info.get("reasons", []))
