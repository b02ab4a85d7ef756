"""Benchmark particle micro-simulators, registered by name.

``get(name, **params)`` builds a system; ``names()`` lists what is registered. Every system has
``simulate(n_particles, n_experiments, times, dt, seed) -> Trajectories`` (see
:class:`~torchmf.systems.base.ParticleSystem`). Each family lives in its own module of this
package and registers itself with :func:`register`; modules are discovered on first use, so a
new family needs no edit here.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, List

from .base import ParticleSystem, SDESystem

__all__ = ["get", "names", "register", "ParticleSystem", "SDESystem"]

_REGISTRY: Dict[str, Callable[..., ParticleSystem]] = {}
_DISCOVERED = False


def register(name: str):
    """Class decorator registering a system factory under ``name``."""

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"name: system {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = factory
        factory.registered_name = name
        return factory

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    _DISCOVERED = True


def names() -> List[str]:
    """Sorted names of the registered systems."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str, **params) -> ParticleSystem:
    """Build the system registered as ``name`` with keyword parameters ``params``."""
    _discover()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: expected a system in {sorted(_REGISTRY)}, but got {name!r}")
    accepted = _parameters(_REGISTRY[name])
    unknown = sorted(set(params) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(f"params: system {name} has no parameter {', '.join(map(repr, unknown))} (expected some of "
                        f"{sorted(accepted)}; on the command line --param KEY=VALUE)")
    try:
        return _REGISTRY[name](**params)
    except TypeError as error:
        raise TypeError(f"params: {name}: {error}") from None


def _parameters(cls):
    """The keyword names ``cls(...)`` accepts, or None when it takes any (``**kwargs``)."""
    import inspect

    signature = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {p.name for p in signature.parameters.values() if p.name != "self"}
