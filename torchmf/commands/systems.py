"""List the registered particle systems with their defaults."""
from __future__ import annotations

NAME = "systems"
HELP = "list the registered particle systems"
ORDER = 11


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from .. import systems

    for name in systems.names():
        factory = systems._REGISTRY[name]
        doc = (factory.__module__ and __import__(factory.__module__, fromlist=["_"]).__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        print(f"{name:22s} d={factory.dim}  N={factory.default_particles:<6d} T={factory.default_t_end:<8g} {summary}")
    return 0
