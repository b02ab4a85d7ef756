"""Which classes a checkpoint may name: the class comes from the config or the command line, never from the file.

LightningCLI reads a checkpoint's hyperparameters into the config before building the model, and
its ``_class_path`` (and any ``class_path`` or dotted ``system`` inside) would then be imported:
a crafted checkpoint could run code. :func:`checkpoint_hyperparameters` checks every import path
the checkpoint holds *before* anything is imported, by its full dotted path:

* the model class it was written by must be the class the config trains (the same string, or the
  same already-imported class under its other name, e.g. ``trainers.X`` and ``trainers.averaged.X``);
* every other path (a user-defined system, ...) must be named by the config itself, be a built-in
  torchmf class, or be given by the user with ``--allow_class``.
"""
from __future__ import annotations

from typing import Iterable

from torchmf._class_path import check_allowed, loaded_object, named_class_paths

__all__ = ["checkpoint_hyperparameters"]

_LIGHTNING_KEYS = ("_class_path", "_instantiator")  # Lightning's own bookkeeping, checked or dropped here


def _same_class(stored: str, wanted: str) -> bool:
    if stored == wanted:
        return True
    wanted_object = loaded_object(wanted)
    # only modules already imported are consulted: a name whose module is not loaded is not the config's class
    return wanted_object is not None and loaded_object(stored) is wanted_object


def checkpoint_hyperparameters(checkpoint: dict, ckpt_path: str, config_model: dict, allowed: Iterable[str]) -> dict:
    """The checkpoint's model hyperparameters (without Lightning's keys), once every import path in
    them is trusted; ``ValueError`` (one line, nothing imported) otherwise.

    ``config_model``: the config's ``model`` entry (``class_path``, ``init_args``); ``allowed``: the
    user's ``--allow_class`` paths."""
    hyperparameters = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hyperparameters, dict):
        raise ValueError(f"ckpt_path: {ckpt_path!r} holds hyper_parameters of type "
                         f"{type(hyperparameters).__name__}, expected a dictionary")
    wanted = str(config_model.get("class_path", ""))
    stored = hyperparameters.get("_class_path")
    if stored is not None and not (isinstance(stored, str) and _same_class(stored, wanted)):
        raise ValueError(f"ckpt_path: the checkpoint was written by {stored!r}, but the config trains {wanted!r} "
                         "(the class comes from the config, never from the checkpoint; nothing was imported)")
    trusted = {path for _, path in named_class_paths(config_model)} | set(allowed)
    source = f"the checkpoint {ckpt_path!r}"
    data = {key: value for key, value in hyperparameters.items() if key not in _LIGHTNING_KEYS}
    for where, path in named_class_paths(data):
        check_allowed(path, trusted, f"ckpt_path ({where})", source)
    return data
