"""Sections of the main job's report (``torchmf report``).

Each module of this package is one section and defines ``TITLE``, ``ORDER`` (position) and
``run(out_dir: Path, quick: bool, progress: bool) -> dict`` returning ``{"markdown": str,
"figures": [file names in out_dir], "metrics": {...}}``. Sections are discovered, so a method
adds its section by adding a module.
"""
from __future__ import annotations

import importlib
import pkgutil


def sections():
    """Section modules sorted by ``ORDER``."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return sorted((m for m in modules if hasattr(m, "run") and hasattr(m, "TITLE")), key=lambda m: m.ORDER)
