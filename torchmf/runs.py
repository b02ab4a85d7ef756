"""Run logic shared by the commands and scripts: recipes, sharded simulation, gathering, user data.

- :func:`load_recipe`, :func:`simulate_recipe`: dataset recipes (``datasets/*.yaml``) in one process;
- :func:`simulate_local`, :func:`gather_trajectories`, :func:`simulate_sharded`: the same under
  ``torchrun`` with the particles split over ranks (see :mod:`torchmf.distributed`);
- :func:`read_particle_data`: a user's particle file -- a torchmf/plain ``.h5``/``.npz`` or a
  long-format ``.csv`` table of tracks -- as :class:`~torchmf.particles.Trajectories`;
  :func:`add_table_arguments` adds the matching command-line options.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

__all__ = ["RECIPE_KEYS", "load_recipe", "simulate_recipe", "simulate_local", "gather_trajectories",
           "simulate_sharded", "read_particle_data", "add_table_arguments", "TABLE_SUFFIXES"]

RECIPE_KEYS = {"system", "params", "particles", "experiments", "t_end", "dt", "record_dt", "seed", "description",
               "dtype"}
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


def load_recipe(path: Path) -> dict:
    """Read a dataset recipe (safe YAML) and check its keys."""
    if not path.is_file():
        raise FileNotFoundError(f"system: recipe file {str(path)!r} does not exist")
    with open(path) as handle:
        try:
            recipe = yaml.safe_load(handle)
        except yaml.YAMLError as error:  # a syntax error or a python tag: one line naming the file
            problem = getattr(error, "problem", None) or type(error).__name__
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"system: recipe {str(path)!r} is not valid safe YAML ({problem}{where})") from None
    if not isinstance(recipe, dict) or "system" not in recipe:
        raise ValueError(f"system: recipe {str(path)!r} must be a mapping with a 'system' key")
    if recipe.get("dtype", "float32") not in ("float32", "float64"):
        raise ValueError(f"system: recipe {str(path)!r} has dtype {recipe['dtype']!r}; expected 'float32' or 'float64'")
    if not isinstance(recipe.get("params") or {}, dict):
        raise ValueError(f"system: recipe {str(path)!r} has 'params' that is not a mapping")
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise ValueError(f"system: recipe {str(path)!r} has unknown keys {sorted(unknown)}; expected {sorted(RECIPE_KEYS)}")
    return recipe


def simulate_recipe(recipe: dict, device="cpu", progress: bool = True):
    """Run a recipe dictionary; returns the Trajectories."""
    import torch

    from . import systems

    system = systems.get(recipe["system"], **recipe.get("params", {}))
    dtype = {"float32": torch.float32, "float64": torch.float64}[recipe.get("dtype", "float32")]
    return system.simulate(n_particles=recipe.get("particles"), n_experiments=recipe.get("experiments", 1),
                           t_end=recipe.get("t_end"), dt=recipe.get("dt"), record_dt=recipe.get("record_dt"),
                           seed=recipe.get("seed", 0), device=device, dtype=dtype, progress=progress)


def simulate_local(recipe: dict, device="cpu", progress: bool = True, seed_offset: int = 0):
    """This rank's share of a recipe run in a torchrun job: ``(system, Trajectories of N/P particles)``.

    Every rank simulates its share of the N particles of each experiment; the mean-field
    coupling is reduced over ranks (torchmf.distributed), so the forces do not depend on the
    number of processes. Rank r draws its noise from seed + seed_offset + r. Ranks that disagree
    on the recipe raise a ``ValueError`` together.
    """
    import torch

    from . import distributed, systems

    rank, _ = distributed.rank_and_size()
    distributed.check_same("recipe", sorted((k, repr(v)) for k, v in recipe.items()))
    system = systems.get(recipe["system"], **recipe.get("params", {}))
    sde = getattr(system, "sde", None)
    if sde is None:
        raise ValueError(f"system: {recipe['system']!r} has its own force evaluation and cannot be sharded; "
                         "run it in one process")
    if sde.interaction is not None:
        sde.interaction.sharded = True
    n_total = recipe.get("particles") or system.default_particles
    local = distributed.shard_slice(n_total)
    dtype = {"float32": torch.float32, "float64": torch.float64}[recipe.get("dtype", "float32")]
    part = system.simulate(n_particles=local.stop - local.start, n_experiments=recipe.get("experiments", 1),
                           t_end=recipe.get("t_end"), dt=recipe.get("dt"), record_dt=recipe.get("record_dt"),
                           seed=recipe.get("seed", 0) + seed_offset + rank, device=device, dtype=dtype,
                           progress=progress and rank == 0)
    return system, part


def gather_trajectories(part, seed: int, note: str):
    """Rank 0 receives every rank's particles (concatenated along N) as one Trajectories; others get None."""
    from . import distributed

    rank, size = distributed.rank_and_size()
    positions = distributed.gather_to_root(part.positions, dim=2)
    extras = {name: distributed.gather_to_root(value, dim=2) for name, value in part.extras.items()}
    if rank != 0:
        return None
    meta = dict(part.meta, seed=seed, processes=size, note=note)
    return type(part)(positions, part.times, meta, extras)


def simulate_sharded(recipe: dict, device="cpu", progress: bool = True):
    """Run a recipe with the particles split over the ranks of a torchrun job (see
    :func:`simulate_local`). Rank 0 receives the whole ensemble and returns it; the other ranks
    return None."""
    _, part = simulate_local(recipe, device, progress)
    return gather_trajectories(part, recipe.get("seed", 0), "particles sharded over processes; rank r used seed + r")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the columns of a long-format track table (used when the data file is a .csv)."""
    group = parser.add_argument_group("long-format tables (.csv: one row per particle and frame)")
    group.add_argument("--id", default="particle", help="particle identity column (default particle)")
    group.add_argument("--time", default="frame", help="frame or time column (default frame)")
    group.add_argument("--columns", nargs="+", default=None, help="coordinate columns (default x y z as present)")
    group.add_argument("--experiment-column", default=None, help="experiment column (default: one experiment)")
    group.add_argument("--frame-dt", type=float, default=None,
                       help="time between frames: times = frame value x frame-dt (default: the values as they are)")


def read_particle_data(path, options=None):
    """A :class:`~torchmf.particles.Trajectories` from ``path``: a long-format table (``.csv``,
    ``.tsv``, ``.txt``; columns named by ``options.id``, ``.time``, ``.columns``,
    ``.experiment_column``, ``.frame_dt`` as added by :func:`add_table_arguments`) or a ``.h5``/``.npz``
    (torchmf's or plain ``positions``/``times``; ``options.frame_dt`` is then refused: the file has its times)."""
    from .particles import Trajectories

    path = Path(path)
    options = options if options is not None else argparse.Namespace()
    if path.suffix.lower() in TABLE_SUFFIXES:
        return Trajectories.from_tracks(path, id=getattr(options, "id", "particle"),
                                        time=getattr(options, "time", "frame"),
                                        columns=getattr(options, "columns", None),
                                        experiment=getattr(options, "experiment_column", None),
                                        dt=getattr(options, "frame_dt", None))
    if getattr(options, "frame_dt", None) is not None:
        raise ValueError(f"--frame-dt: applies to long-format tables (.csv) only; {str(path)!r} stores its times")
    return Trajectories.load(path)
