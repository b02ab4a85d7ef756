"""Simulate a registered system (or a dataset recipe YAML) and write a Trajectories file.

Examples:
    torchmf simulate ou_linear -o runs/ou.h5 --particles 2000 --t-end 2 --seed 0
    torchrun --standalone --nproc-per-node 2 -m torchmf simulate ou_linear -o runs/ou.h5  # sharded
    torchmf simulate datasets/qanr_1d.yaml -o runs/qanr.h5
    torchmf simulate double_well -o dw.npz --param a=0.5 --param sigma=0.7
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml  # noqa: F401

from .._validation import parse_key_values
from ..data.files import check_output_path

# the run logic lives in the library (torchmf.recipes); these names stay importable from here
from ..recipes import gather_trajectories, load_recipe, simulate_local, simulate_recipe, simulate_sharded  # noqa: F401

NAME = "simulate"
HELP = "simulate a registered system or dataset recipe and write an HDF5/npz dataset"
ORDER = 10

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", help="registered system name (see --list) or a recipe .yaml under datasets/")
    parser.add_argument("-o", "--output", required=False, help="output file (.h5, .hdf5 or .npz)")
    parser.add_argument("--particles", type=int, help="particles per experiment N")
    parser.add_argument("--experiments", type=int, help="independent experiments M")
    parser.add_argument("--t-end", type=float, help="final time")
    parser.add_argument("--dt", type=float, help="micro time step")
    parser.add_argument("--record-dt", type=float, help="time between recorded snapshots")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same file)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="system parameter (YAML value), repeatable")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", choices=["float32", "float64"], help="precision (default float32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def recipe_from_args(args) -> dict:
    if args.system.endswith((".yaml", ".yml")):
        recipe = load_recipe(Path(args.system))
    else:
        recipe = {"system": args.system}
    params = dict(recipe.get("params") or {}, **parse_key_values(args.param, "--param"))
    recipe["params"] = params
    for key in ("particles", "experiments", "t_end", "dt", "record_dt", "seed", "dtype"):
        value = getattr(args, key, None)
        if value is not None:
            recipe[key] = value
    return recipe


def run(args) -> int:
    from .. import distributed

    recipe = recipe_from_args(args)
    output = Path(args.output) if args.output else Path("runs") / f"{recipe['system']}.h5"
    if output.suffix.lower() not in (".h5", ".hdf5", ".npz"):  # before the run, not after it
        raise ValueError(f"--output: expected a .h5, .hdf5 or .npz file name, but got {str(output)!r}")
    check_output_path("--output", output)
    rank, size = distributed.setup(args.device)
    try:
        if size > 1:
            trajectories = simulate_sharded(recipe, device=args.device, progress=not args.no_progress)
        else:
            trajectories = simulate_recipe(recipe, device=args.device, progress=not args.no_progress)
        if rank == 0:
            trajectories.save(output)
            print(f"wrote {output}: {trajectories}")
    finally:
        distributed.teardown()
    return 0
