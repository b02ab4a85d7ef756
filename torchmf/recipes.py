"""Dataset recipes: a system, its parameters and the run's sizes, read from safe YAML and simulated.

A recipe (``datasets/*.yaml``) names a registered system (:func:`torchmf.systems.get`) and its
``params``, and ``particles``, ``experiments``, ``t_end``, ``dt``, ``record_dt``, ``seed``, ``dtype``.

- :func:`load_recipe`, :func:`simulate_recipe`: read and run one in one process;
- :func:`simulate_local`, :func:`gather_trajectories`, :func:`simulate_sharded`: the same under
  ``torchrun`` with the particles split over ranks (see :mod:`torchmf.distributed`).
"""
from __future__ import annotations

import errno
from pathlib import Path

import yaml

__all__ = ["RECIPE_KEYS", "load_recipe", "simulate_recipe", "simulate_local", "gather_trajectories",
           "simulate_sharded"]

RECIPE_KEYS = {"system", "params", "particles", "experiments", "t_end", "dt", "record_dt", "seed", "description",
               "dtype"}


def load_recipe(path: Path) -> dict:
    """Read a dataset recipe (safe YAML) and check its keys."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "system: expected a recipe file (.yaml), but this is a folder", str(path))
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
