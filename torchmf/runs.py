"""Run logic of the commands: the options of track tables and the model a user nudges.

- :func:`add_table_arguments`: the command-line options naming the columns of a long-format table,
  read by :func:`torchmf.data.read_particle_data`;
- :func:`load_model`: the particle model of the user's choice (registered system, identified WSINDy
  JSON, drift checkpoint of ``trainers.DriftModule``, pretrained drift) that ``torchmf nudge`` nudges.

The recipes (:mod:`torchmf.recipes`: :func:`load_recipe`, :func:`simulate_recipe`, sharded runs) and
the readers of a user's files (:mod:`torchmf.data`: :func:`read_particle_data`,
:func:`read_observations`, :func:`initial_particles`) are re-exported here under their old names.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .data.observations import initial_particles
from .data.readers import TABLE_SUFFIXES, read_observations, read_particle_data
from .recipes import RECIPE_KEYS, gather_trajectories, load_recipe, simulate_local, simulate_recipe, simulate_sharded

__all__ = ["RECIPE_KEYS", "load_recipe", "simulate_recipe", "simulate_local", "gather_trajectories",
           "simulate_sharded", "read_particle_data", "add_table_arguments", "TABLE_SUFFIXES", "load_model",
           "read_observations", "initial_particles"]


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the columns of a long-format track table (used when the data file is a .csv)."""
    group = parser.add_argument_group("long-format tables (.csv: one row per particle and frame)")
    group.add_argument("--id", default="particle", help="particle identity column (default particle)")
    group.add_argument("--time", default="frame", help="frame or time column (default frame)")
    group.add_argument("--columns", nargs="+", default=None, help="coordinate columns (default x y z as present)")
    group.add_argument("--experiment-column", default=None, help="experiment column (default: one experiment)")
    group.add_argument("--frame-dt", type=float, default=None,
                       help="time between frames: times = frame value x frame-dt (default: the values as they are)")


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
        from trainers.drift import drift_model_from_checkpoint

        return drift_model_from_checkpoint(path).sde(n_experiments), f"drift checkpoint {path.name}"
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
