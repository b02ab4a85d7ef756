"""Identify the mean-field equation (interaction K, potential V, diffusivity sigma) from a particle dataset by WSINDy.

Examples:
    torchmf identify runs/qanr.h5
    torchmf identify runs/qanr.h5 --library qanr_1d --test-functions qanr_1d --json runs/qanr_model.json
    torchmf identify data.h5 --library my_library.yaml --noise 0.05
    torchmf identify tracks.csv --id particle --time frame --columns x y --frame-dt 0.1   # long-format tracks
    torchmf identify data.npz          # a plain npz/h5 holding positions (M, L, N, d) or (L, N, d) and times (L,)
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..data.files import check_output_path

from ..runs import add_table_arguments

NAME = "identify"
HELP = "identify the mean-field PDE (K, V, sigma) of a particle dataset by weak-form sparse regression (WSINDy)"
ORDER = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="particle data: .h5/.hdf5/.npz (written by `torchmf simulate`, or plain with "
                        "arrays 'positions' (M, L, N, d) or (L, N, d), NaN = lost, and 'times' (L,)) or a "
                        "long-format .csv of tracks (one row per particle and frame)")
    add_table_arguments(parser)
    parser.add_argument("--library", default="default",
                        help="library preset (default, local_2d, qanr_1d, keller_segel_2d) or a .yaml/.json spec")
    parser.add_argument("--test-functions", default=None,
                        help="test-function preset (local_2d, qanr_1d, keller_segel_2d); default: changepoint rule")
    parser.add_argument("--grid-shape", type=int, default=None, help="grid points per axis (default 256 in 1-D, 128)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="add extrinsic measurement noise of this ratio before identifying (robustness checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    parser.add_argument("--json", default=None, help="write the model (coefficients, equation, diagnostics) here")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def run(args) -> int:
    import torch

    from .. import wsindy
    from ..data import read_particle_data

    from ..distributed import check_device

    device = check_device(args.device, "--device")
    data = read_particle_data(Path(args.data), args).to(device)
    if args.grid_shape is not None:  # the (L, G^d) histogram and its weak-form products, sized before building
        from .._memory import check_fits

        if args.grid_shape < 2:
            raise ValueError(f"--grid-shape: expected an integer >= 2, but got {args.grid_shape}")
        check_fits("--grid-shape", 8.0 * 4 * data.n_experiments * data.n_times * float(args.grid_shape) ** data.dim,
                   device, f"a {args.grid_shape}^{data.dim} histogram of {data.n_times} times")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise ValueError(f"--noise: expected a finite non-negative ratio, but got {args.noise}")
    if args.json:
        check_output_path("--json", args.json)
    if args.noise:
        if data.mask is not None:  # the noise helper scales by the RMS of complete data
            raise ValueError(f"--noise: adding synthetic measurement noise needs complete tracks, but {args.data} has "
                             f"{int((~data.mask).sum())} missing entries (they are already real data)")
        data = wsindy.add_measurement_noise(data, args.noise, seed=args.seed)
    model = wsindy.identify(data, args.library, test_functions=args.test_functions, grid_shape=args.grid_shape)
    info = model.info
    missing = "" if data.mask is None else f" ({int((~data.mask).sum())} missing entries, masked)"
    print(f"# {args.data}: M={data.n_experiments}, L={data.n_times}, N={data.n_particles}, d={data.dim}{missing}; "
          f"library {model.library.name!r} ({len(model.library)} terms), G {info['size_G'][0]}x{info['size_G'][1]}, "
          f"cond {info['condition_number']:.3g}, lambda {info['threshold']:.3g}, {info['seconds']['total']:.2f} s")
    print(model.equation())
    if args.json:
        path = model.save(args.json)
        print(f"wrote {path}")
    return 0
