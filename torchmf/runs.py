"""Run logic shared by the commands and scripts: recipes, sharded simulation, gathering, user data.

- :func:`load_recipe`, :func:`simulate_recipe`: dataset recipes (``datasets/*.yaml``) in one process;
- :func:`simulate_local`, :func:`gather_trajectories`, :func:`simulate_sharded`: the same under
  ``torchrun`` with the particles split over ranks (see :mod:`torchmf.distributed`);
- :func:`read_particle_data`: a user's particle file -- a torchmf/plain ``.h5``/``.npz`` or a
  long-format ``.csv`` table of tracks -- as :class:`~torchmf.particles.Trajectories`;
  :func:`add_table_arguments` adds the matching command-line options;
- :func:`read_observations`, :func:`load_model`, :func:`initial_particles`: nudging a model of the
  user's choice (registered system, identified WSINDy JSON, drift checkpoint) towards the user's
  observations (particle files or image stacks).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

__all__ = ["RECIPE_KEYS", "load_recipe", "simulate_recipe", "simulate_local", "gather_trajectories",
           "simulate_sharded", "read_particle_data", "add_table_arguments", "TABLE_SUFFIXES", "load_model",
           "read_observations", "initial_particles"]

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


def load_model(spec: str, params=None, n_experiments: int = 1):
    """A particle model with ``step(t, x, dt, generator)`` from ``spec``.

    ``spec``: a registered system name (:func:`torchmf.systems.names`, with ``params``), an identified
    model JSON written by :meth:`torchmf.wsindy.WSINDyModel.save` (simulated with the grid backend), a
    drift checkpoint (``.pt`` payload of ``trainers.DriftModule.payload()`` or a Lightning ``.ckpt`` of
    a ``DriftModule``; read with ``weights_only=True``) or a pretrained drift name
    (:func:`torchmf.pretrained.names`). Returns ``(model, description)``.
    """
    from . import pretrained, systems

    path = Path(spec)
    if path.suffix.lower() == ".json":
        from .wsindy import WSINDyModel

        if not path.is_file():
            raise FileNotFoundError(f"--model: no such file {spec!r}")
        return WSINDyModel.load(path).sde(n_experiments=n_experiments, backend="grid"), f"WSINDy model {path.name}"
    if path.suffix.lower() in (".pt", ".ckpt"):
        return _drift_from_checkpoint(path).sde(n_experiments), f"drift checkpoint {path.name}"
    if spec in systems.names():
        system = systems.get(spec, **(params or {}))
        model = getattr(system, "sde", None) or getattr(system, "pic", None)
        if model is None:
            raise ValueError(f"--model: system {spec!r} has no particle model to step from positions alone")
        return model, f"system {spec}"
    if spec in pretrained.names():
        model = pretrained.load(spec)
        if not hasattr(model, "sde"):
            raise ValueError(f"--model: pretrained {spec!r} is not a drift model")
        return model.sde(n_experiments), f"pretrained {spec}"
    raise ValueError(f"--model: expected a registered system {systems.names()}, a WSINDy model .json, a drift "
                     f"checkpoint (.pt/.ckpt) or a pretrained name {pretrained.names()}, but got {spec!r}")


def _drift_from_checkpoint(path: Path):
    """A ``trainers.drift.DriftModel`` from a ``.pt`` payload or a Lightning ``.ckpt`` (weights only)."""
    from trainers.drift import DriftModel, build_drift_model

    from .pretrained import load_payload

    payload = load_payload(path)
    if isinstance(payload, dict) and "config" in payload and "state_dict" in payload:
        return build_drift_model(payload)
    if not (isinstance(payload, dict) and "state_dict" in payload and "hyper_parameters" in payload):
        raise ValueError(f"--model: {str(path)!r} is neither a DriftModule payload (config, state_dict) nor a "
                         f"Lightning checkpoint of a DriftModule")
    names = set(DriftModel.__init__.__code__.co_varnames[1:DriftModel.__init__.__code__.co_argcount])
    config = {k: v for k, v in payload["hyper_parameters"].items() if k in names}
    state = {k[len("model."):]: v for k, v in payload["state_dict"].items() if k.startswith("model.")}
    model = DriftModel(**config)
    model.load_state_dict(state)
    return model.eval()


def read_observations(path, extent=None, frame_dt=None, **image_options):
    """Observations from a file: particle data (``positions``/``times`` or a track table) become
    :class:`~torchmf.nudging.ParticleObservations`, image stacks (``images``; ``.npz``, ``.h5``,
    ``.tif``) :class:`~torchmf.nudging.GridObservations` (``extent`` = image edges, ``image_options``
    as in its constructor). ``frame_dt``: times ``0, dt, 2 dt, ...`` when the file has none."""
    from .images import read_images
    from .nudging import GridObservations, ParticleObservations

    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES or (path.suffix.lower() in (".npz", ".h5", ".hdf5")
                                                  and _holds(path, "positions")):
        options = argparse.Namespace(frame_dt=frame_dt if path.suffix.lower() in TABLE_SUFFIXES else None)
        return ParticleObservations(read_particle_data(path, options))
    images, stored = read_images(path)
    times = stored.get("times")
    if times is None and frame_dt is not None:
        times = [index * frame_dt for index in range(images.shape[-3] if images.ndim >= 3 else 1)]
    if extent is None and "extent" in stored:
        extent = (stored["extent"][0].tolist(), stored["extent"][1].tolist())
    if extent is None or times is None:
        raise ValueError(f"--observations: {str(path)!r} needs an extent (--extent) and times (--frame-dt) when the "
                         f"file does not hold them")
    return GridObservations(images, extent, times, **image_options)


def _holds(path: Path, name: str) -> bool:
    from ._io import read_plain_arrays

    return name in read_plain_arrays(path)


def initial_particles(observations, count: int, seed: int):
    """``(1, count, d)`` particles drawn from the first observation: resampled observed particles, or
    pixels drawn with probability proportional to their value and placed uniformly inside the pixel."""
    import torch

    from .nudging import GridObservations

    generator = torch.Generator().manual_seed(seed)
    points, weights = observations.sources(0)
    points, weights = points[0].double().cpu(), weights[0].double().cpu()
    if bool((weights < 0).any()):
        raise ValueError("--observations: the first image has negative values; cannot draw particles from it "
                         "(pass --initial FILE)")
    chosen = torch.multinomial(weights, count, replacement=True, generator=generator)
    start = points[chosen]
    if isinstance(observations, GridObservations):
        spacing = torch.tensor(observations.grid.spacing, dtype=torch.float64)
        start = start + (torch.rand(start.shape, generator=generator, dtype=torch.float64) - 0.5) * spacing
    return start.unsqueeze(0)
