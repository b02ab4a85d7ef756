"""Registry of pretrained models shipped inside the package.

Each model is two files in ``torchmf/checkpoints/``: ``NAME.pt`` (a ``torch.save`` of plain
tensors, numbers, strings, lists and dicts, loaded with ``weights_only=True`` so no code runs)
and ``NAME.json`` (the manifest: description, the builder that turns the payload into a model,
the SHA-256 of ``NAME.pt``, the training config and final metrics). :func:`load` verifies the
hash before reading the payload, so a truncated or foreign file is refused with a clear error.

Builders are named ``"module:function"`` and must be one of :data:`BUILDERS` (an allow-list
inside the package); they take ``(payload, manifest)`` and return an ``nn.Module``. Only the
registered names (:func:`names`) load, and a manifest's ``file`` is a bare file name in
``CHECKPOINT_DIR`` (no path separators), so neither a name nor a manifest can point elsewhere.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ._class_path import check_allowed, named_class_paths
from .data.files import atomic_path, write_json

__all__ = ["names", "load", "info", "save", "CHECKPOINT_DIR", "BUILDERS"]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: The only functions a manifest may name to turn a payload into a model.
BUILDERS = ("torchmf.averaging:build_pretrained", "trainers.drift:build_drift_model")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def names() -> List[str]:
    """Names of the shipped pretrained models."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json"))


def info(name: str) -> Dict:
    """The manifest of ``name`` (description, config, metrics, sha256)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, one of {names()}, but got {type(name).__name__}")
    if name not in names():  # never a path: "../x", "/abs/x" and "a/b" are not registered names
        raise ValueError(f"name: expected one of {names()}, but got {name!r}")
    path = CHECKPOINT_DIR / f"{name}.json"
    with open(path) as handle:
        try:
            manifest = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"name: manifest of {name!r} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"name: manifest of {name!r} is not a JSON object")
    for key in ("builder", "sha256", "file"):
        if not isinstance(manifest.get(key), str):
            raise ValueError(f"name: manifest of {name!r} lacks a string {key!r}")
    _check_file_name(manifest["file"], name)
    return manifest


def _check_file_name(file_name: str, name: str) -> None:
    if Path(file_name).name != file_name or "\\" in file_name or not _NAME.match(file_name) \
            or not file_name.endswith(".pt"):
        raise ValueError(f"name: manifest of {name!r} names the file {file_name!r}; expected a bare '.pt' file "
                         "name inside the checkpoint folder (no path separators)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _builder(spec: str):
    if spec not in BUILDERS:
        raise ValueError(f"builder: expected one of {list(BUILDERS)}, but got {spec!r}")
    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_payload(path, expected_sha256: Optional[str] = None):
    """Verify (optionally) and read a checkpoint payload without executing code from it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected a checkpoint file, but {str(path)!r} is a folder")
    if not path.is_file():
        raise FileNotFoundError(f"path: checkpoint {str(path)!r} does not exist")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise ValueError(f"path: checkpoint {str(path)!r} fails its SHA-256 check (truncated or replaced file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign/corrupt files
        raise ValueError(f"path: {str(path)!r} is not a readable torch checkpoint ({type(error).__name__})") from None


def load(name: str, device="cpu") -> torch.nn.Module:
    """Load the pretrained model ``name``: hash verified, eval mode, on ``device``."""
    manifest = info(name)
    payload = load_payload(CHECKPOINT_DIR / manifest["file"], manifest["sha256"])
    # a payload never chooses code: an import path in its config (e.g. a user-defined system) is refused
    # before the builder could import it; torchmf's own classes are allowed
    for where, path in named_class_paths(payload.get("config") if isinstance(payload, dict) else None):
        check_allowed(path, (), f"name ({where})", f"the pretrained payload {name!r}")
    model = _builder(manifest["builder"])(payload, manifest)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"builder: {manifest['builder']} returned {type(model).__name__}, expected an nn.Module")
    return model.to(device).eval()


def save(name: str, payload: dict, builder: str, description: str, config: dict, metrics: dict,
         directory: Optional[Path] = None) -> Path:
    """Write ``NAME.pt`` and ``NAME.json`` atomically (used by scripts/train_pretrained.py)."""
    _builder(builder)  # fail early on a bad builder name
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name: expected letters, digits, '.', '_' or '-' (no path separators), but got {name!r}")
    directory = Path(directory or CHECKPOINT_DIR)
    checkpoint = directory / f"{name}.pt"
    with atomic_path(checkpoint, suffix=".pt") as temporary:
        torch.save(payload, temporary)
    manifest = {"name": name, "file": checkpoint.name, "description": description, "builder": builder,
                "sha256": sha256(checkpoint), "config": config, "metrics": metrics,
                "torch": torch.__version__}
    write_json(directory / f"{name}.json", manifest)
    return checkpoint
