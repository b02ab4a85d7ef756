"""Which fast-slow system a model is built on: :func:`fast_system` turns a registered name, an import
path of a user-defined subclass, its YAML form or the object itself into a
:class:`~torchmf.systems.fastslow.FastSlowSystem`."""
from __future__ import annotations

from typing import Optional

from .._class_path import import_subclass, split_class_path

__all__ = ["fast_system"]


def fast_system(system, params: Optional[dict] = None):
    """A :class:`~torchmf.systems.fastslow.FastSlowSystem` from a registered name, an import path
    ``"package.module.Class"`` of a user-defined subclass (also as ``{"class_path": ..., "init_args": {...}}``,
    the YAML form), or the object itself. A system built from an import path carries that path as its
    ``registered_name``, so configs and checkpoints that store it rebuild it in a fresh process."""
    from .. import systems
    from ..systems.fastslow import FastSlowSystem

    if isinstance(system, FastSlowSystem):
        return system
    if isinstance(system, dict):
        system, params = split_class_path(system, params)
    if isinstance(system, str) and system not in systems.names() and "." in system:
        return _imported_system(system, params)
    if not isinstance(system, str) or system not in systems.names():
        raise ValueError(f"system: expected a registered fast-slow system (fastslow_cubic, fastslow_tilted_well, "
                         f"lorenz96_two_scale), but got {system!r}")
    built = systems.get(system, **dict(params or {}))
    if not isinstance(built, FastSlowSystem):
        raise ValueError(f"system: expected a fast-slow system (fastslow_*, lorenz96_two_scale), but got {system!r}")
    return built


def _imported_system(path: str, params: Optional[dict]):
    """Instantiate the user's :class:`FastSlowSystem` subclass named by its import path."""
    from ..systems.fastslow import FastSlowSystem

    cls = import_subclass(path, FastSlowSystem, "system", "torchmf.systems.fastslow.FastSlowSystem")
    built = cls(**dict(params or {}))
    built.registered_name = path  # stored in configs and checkpoints: rebuilt by import in a fresh process
    return built
