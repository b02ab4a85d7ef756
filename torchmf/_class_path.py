"""The one ``class_path`` import helper: a user-defined class named by its import path.

A config names such a class as ``"package.module.Class"`` or, in the YAML form,
``{"class_path": "package.module.Class", "init_args": {...}}``. :func:`split_class_path` reads the
YAML form; :func:`import_subclass` imports the class and checks that it derives from the base class
the caller expects (e.g. :class:`~torchmf.systems.fastslow.FastSlowSystem` for a fast-slow system).
"""
from __future__ import annotations

import importlib
from typing import Optional, Tuple

__all__ = ["split_class_path", "import_subclass"]


def split_class_path(spec: dict, params: Optional[dict] = None, argument: str = "system") -> Tuple[str, dict]:
    """``{"class_path": path, "init_args": {...}}`` -> ``(path, init_args updated by params)``.

    ``argument`` names the config entry in the error message."""
    unknown = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or unknown or not isinstance(spec.get("init_args", {}), dict):
        raise ValueError(f"{argument}: expected a name or {{class_path: package.module.Class, init_args: {{...}}}}, "
                         f"but got {spec!r}")
    return spec["class_path"], {**spec.get("init_args", {}), **dict(params or {})}


def import_subclass(path: str, base: type, argument: str, base_path: str) -> type:
    """The class named by ``path`` (``"package.module.Class"``), checked to be a subclass of ``base``.

    ``argument`` names the config entry and ``base_path`` the base class's public import path in the
    error messages: ``ValueError`` when the module or the class cannot be imported or is no subclass."""
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{argument}: cannot import {path!r} ({error}); put its module on PYTHONPATH") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{argument}: {path!r} is not a subclass of {base_path}")
    return cls
