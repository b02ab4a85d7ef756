"""Readers for image stacks (density observations): ``.npz``, ``.h5``/``.hdf5`` and TIFF.

:func:`read_images` returns the stack as a float numpy array ``(L, rows, columns)`` (or whatever
``(M, L, ...)`` shape the file holds; axis order as stored, see
:class:`torchmf.data.GridObservations` ``indexing``) and the optional ``times`` ``(L,)`` and
``extent`` ``(2, d)`` (lower and upper image edges) stored beside it. Nothing from a file is
executed (``allow_pickle=False``; TIFF through ``tifffile``, the optional ``images`` extra).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .files import read_plain_arrays

__all__ = ["read_images", "IMAGE_KEYS"]

#: Array names searched, in order, when no ``key`` is given.
IMAGE_KEYS = ("images", "densities", "image", "stack")
_TIFF_SUFFIXES = {".tif", ".tiff"}
_HDF5_SUFFIXES = {".h5", ".hdf5"}


def read_images(path: Union[str, os.PathLike], key: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Read an image stack.

    Arguments:
        path: ``.npz``, ``.h5``/``.hdf5`` or ``.tif``/``.tiff`` file.
        key: array name in an npz/h5 file (default: the first of :data:`IMAGE_KEYS` present).

    Returns:
        ``(images, stored)``: images as float64 ``(L, ...)``; ``stored`` holds ``times`` and
        ``extent`` when the file has them (npz/h5 only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        return _as_float(path, _read_tiff(path)), {}
    if suffix not in (".npz",) + tuple(_HDF5_SUFFIXES):
        raise ValueError(f"path: expected a .npz, .h5, .hdf5, .tif or .tiff image stack, but got {str(path)!r}")
    arrays = read_plain_arrays(path)
    names = [key] if key is not None else [name for name in IMAGE_KEYS if name in arrays]
    if not names or names[0] not in arrays:
        wanted = repr(key) if key is not None else f"one of {list(IMAGE_KEYS)} (or pass key=)"
        raise ValueError(f"key: {str(path)!r} holds {sorted(arrays)}; expected an image array named {wanted}")
    stored = {name: np.asarray(arrays[name], dtype=np.float64) for name in ("times", "extent") if name in arrays}
    return _as_float(path, arrays[names[0]]), stored


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise ImportError("TIFF stacks need the optional 'tifffile' package: pip install 'torchmf[images]'") from None
    try:
        return tifffile.imread(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"path: {str(path)!r} is not a readable TIFF stack ({error})") from None


def _as_float(path: Path, images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype.kind not in "fiu":
        raise ValueError(f"path: {str(path)!r}: the images hold {images.dtype} values, expected numbers")
    return images.astype(np.float64)
