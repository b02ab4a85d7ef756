"""The one ``class_path`` import helper: a user-defined class named by its import path.

A config names such a class as ``"package.module.Class"`` or, in the YAML form,
``{"class_path": "package.module.Class", "init_args": {...}}``. :func:`split_class_path` reads the
YAML form; :func:`import_subclass` imports the class and checks that it derives from the base class
the caller expects (e.g. :class:`~torchmf.systems.fastslow.FastSlowSystem` for a fast-slow system).

Importing a module runs its code. A config's ``class_path`` is the user's own choice; a class named
inside a *file* (a checkpoint's hyperparameters) is not: :func:`check_allowed` compares such a name,
by its full dotted path, with an allow-list (:data:`BUILTIN_CLASSES` plus the user's own names)
before anything is imported, and :func:`named_class_paths` finds every such name in a file's data.
"""
from __future__ import annotations

import importlib
import re
import sys
from typing import Iterable, List, Optional, Tuple

__all__ = ["split_class_path", "import_subclass", "check_allowed", "named_class_paths", "loaded_object",
           "BUILTIN_CLASSES"]

#: Classes a checkpoint may name without the user allowing them: torchmf's own LightningModules
#: under both of their import paths (the lazy ``trainers.X`` and the defining module).
BUILTIN_CLASSES = frozenset(
    f"{prefix}{name}" for module, names in {
        "trainers.averaged": ("AveragedDynamicsModule", "VariationalAveragedDynamicsModule"),
        "trainers.drift": ("DriftModule",)}.items()
    for name in names for prefix in ("trainers.", f"{module}."))

# an import path: two or more identifiers joined by dots ("pkg.mod.Class"); a file name such as
# "x.csv" also matches and is then refused like a class, which is safe (the user can allow it)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def split_class_path(spec: dict, params: Optional[dict] = None, argument: str = "system") -> Tuple[str, dict]:
    """``{"class_path": path, "init_args": {...}}`` -> ``(path, init_args updated by params)``.

    ``argument`` names the config entry in the error message."""
    unknown = set(spec) - {"class_path", "init_args"}
    if "class_path" not in spec or unknown or not isinstance(spec.get("init_args", {}), dict):
        raise ValueError(f"{argument}: expected a name or {{class_path: package.module.Class, init_args: {{...}}}}, "
                         f"but got {spec!r}")
    return spec["class_path"], {**spec.get("init_args", {}), **dict(params or {})}


def check_allowed(path: str, allowed: Iterable[str], argument: str, source: str) -> None:
    """Refuse (``ValueError``, nothing imported) an import ``path`` found in ``source`` (e.g. "the
    checkpoint 'x.ckpt'") unless its full dotted path is in :data:`BUILTIN_CLASSES` or ``allowed``."""
    if path in BUILTIN_CLASSES or path in set(allowed):
        return
    raise ValueError(f"{argument}: {source} names the class {path!r}, which is neither a built-in torchmf class nor "
                     f"allowed; nothing was imported (a class comes from the config or the command line; if you "
                     f"trust the file, pass --allow_class {path})")


def named_class_paths(value, where: str = "") -> List[Tuple[str, str]]:
    """Every import-path-like string inside ``value`` (nested dicts and lists): ``[(where, path)]``,
    ``where`` being the dotted key that holds it (e.g. ``"system.class_path"``)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += named_class_paths(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += named_class_paths(item, f"{where}[{index}]")
    elif isinstance(value, str) and _DOTTED.match(value):
        found.append((where, value))
    return found


def loaded_object(path: str):
    """The object ``path`` names if its module is already imported, else None; never imports."""
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    return getattr(module, name, None) if module is not None and name else None


def import_subclass(path: str, base: type, argument: str, base_path: str,
                    allowed: Optional[Iterable[str]] = None, source: str = "the file") -> type:
    """The class named by ``path`` (``"package.module.Class"``), checked to be a subclass of ``base``.

    ``argument`` names the config entry and ``base_path`` the base class's public import path in the
    error messages: ``ValueError`` when the module or the class cannot be imported (also when the
    module itself fails while importing) or is no subclass. With ``allowed`` (a path read from
    ``source``, not chosen by the user), :func:`check_allowed` runs first and nothing is imported
    when it refuses."""
    if not isinstance(path, str) or not _DOTTED.match(path):
        raise ValueError(f"{argument}: expected an import path 'package.module.Class', but got {path!r}")
    if allowed is not None:
        check_allowed(path, allowed, argument, source)
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{argument}: cannot import {path!r} ({type(error).__name__}: {error}); install the "
                         "missing package or put its module on PYTHONPATH") from None
    except Exception as error:  # the module's own code failed (SyntaxError, NameError, ...): the user's file
        raise ValueError(f"{argument}: importing {module_name!r} for {path!r} failed ({type(error).__name__}: "
                         f"{error}); fix that module") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{argument}: cannot import {path!r}: module {module_name!r} ({getattr(module, '__file__', '')}) "
                         f"has no class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{argument}: {path!r} is not a subclass of {base_path}")
    return cls
