"""Registry of pretrained models shipped inside the package.

Each model is two files in ``torchmf/checkpoints/``: ``NAME.pt`` (a ``torch.save`` of plain
tensors, numbers, strings, lists and dicts, loaded with ``weights_only=True`` so no code runs)
and ``NAME.json`` (the manifest: description, the builder that turns the payload into a model,
the SHA-256 of ``NAME.pt``, the training config and final metrics). :func:`load` verifies the
hash before reading the payload, so a truncated or foreign file is refused with a clear error.

Builders are named ``"module:function"`` and must live in ``torchmf`` or ``trainers``; they take
``(payload, manifest)`` and return an ``nn.Module``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ._io import atomic_path, write_json

__all__ = ["names", "load", "info", "save", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_ALLOWED_PACKAGES = ("torchmf", "trainers")


def names() -> List[str]:
    """Names of the shipped pretrained models."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json"))


def info(name: str) -> Dict:
    """The manifest of ``name`` (description, config, metrics, sha256)."""
    path = CHECKPOINT_DIR / f"{name}.json"
    if not isinstance(name, str) or not path.is_file():
        raise ValueError(f"name: expected one of {names()}, but got {name!r}")
    with open(path) as handle:
        try:
            manifest = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"name: manifest of {name!r} is not valid JSON ({error})") from None
    for key in ("builder", "sha256", "file"):
        if key not in manifest:
            raise ValueError(f"name: manifest of {name!r} lacks {key!r}")
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _builder(spec: str):
    module_name, _, function_name = spec.partition(":")
    if not function_name or module_name.split(".")[0] not in _ALLOWED_PACKAGES:
        raise ValueError(f"builder: expected 'module:function' inside {_ALLOWED_PACKAGES}, but got {spec!r}")
    return getattr(importlib.import_module(module_name), function_name)


def load_payload(path, expected_sha256: Optional[str] = None):
    """Verify (optionally) and read a checkpoint payload without executing code from it."""
    path = Path(path)
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
    model = _builder(manifest["builder"])(payload, manifest)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"builder: {manifest['builder']} returned {type(model).__name__}, expected an nn.Module")
    return model.to(device).eval()


def save(name: str, payload: dict, builder: str, description: str, config: dict, metrics: dict,
         directory: Optional[Path] = None) -> Path:
    """Write ``NAME.pt`` and ``NAME.json`` atomically (used by scripts/train_pretrained.py)."""
    _builder(builder)  # fail early on a bad builder name
    directory = Path(directory or CHECKPOINT_DIR)
    checkpoint = directory / f"{name}.pt"
    with atomic_path(checkpoint, suffix=".pt") as temporary:
        torch.save(payload, temporary)
    manifest = {"name": name, "file": checkpoint.name, "description": description, "builder": builder,
                "sha256": sha256(checkpoint), "config": config, "metrics": metrics,
                "torch": torch.__version__}
    write_json(directory / f"{name}.json", manifest)
    return checkpoint
