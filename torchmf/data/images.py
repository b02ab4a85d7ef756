"""Readers for image stacks (density observations): ``.npz``, ``.h5``/``.hdf5`` and TIFF.

:func:`read_images` returns the stack as a float numpy array ``(L, rows, columns)`` (or whatever
``(M, L, ...)`` shape the file holds; axis order as stored, see
:class:`torchmf.data.GridObservations` ``indexing``) and the optional ``times`` ``(L,)`` and
``extent`` ``(2, d)`` (lower and upper image edges) stored beside it. Nothing from a file is
executed (``allow_pickle=False``; TIFF through ``tifffile``, the optional ``images`` extra).

A TIFF's calibration is read from its metadata (:func:`read_image_metadata`): ImageJ's frame
interval (``finterval``, unit ``tunit``, default seconds) and pixel size (``XResolution`` /
``YResolution`` in pixels per ``unit``), or OME-XML's ``TimeIncrement`` and ``PhysicalSizeX/Y`` with
their units. They give ``times = frame x interval`` and the extent ``(0, 0)`` to ``(columns x
pixel width, rows x pixel height)`` (pixel coordinates times the pixel size, row 0 at y = 0, as
trackers such as trackpy report positions). A ``.npz``/``.h5`` may state its units in
``time_unit`` and ``length_unit`` (text arrays).
"""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .files import read_plain_arrays

__all__ = ["read_images", "read_image_metadata", "ImageMetadata", "IMAGE_KEYS", "MissingPackageError"]

_INSTALL_IMAGES = 'pip install "torchmf[images]"'


class MissingPackageError(ImportError, ValueError):
    """An optional package a file needs is not installed (a user's fix: one ``pip install``; the
    command line prints it as one line)."""


@dataclass
class ImageMetadata:
    """Calibration stored in an image file: ``times (L,)`` and ``extent (2, d)`` edges (or None), their
    units (None when the file does not say) and where each came from."""

    times: Optional[np.ndarray] = None
    extent: Optional[np.ndarray] = None
    time_unit: Optional[str] = None
    length_unit: Optional[str] = None
    sources: Dict[str, str] = field(default_factory=dict)

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
        images = _as_float(path, _read_tiff(path))
        metadata = _tiff_metadata(path, images.shape)
        stored = {name: value for name, value in (("times", metadata.times), ("extent", metadata.extent))
                  if value is not None}
        return images, stored
    if suffix not in (".npz",) + tuple(_HDF5_SUFFIXES):
        raise ValueError(f"path: expected a .npz, .h5, .hdf5, .tif or .tiff image stack, but got {str(path)!r}")
    arrays = read_plain_arrays(path)
    names = [key] if key is not None else [name for name in IMAGE_KEYS if name in arrays]
    if not names or names[0] not in arrays:
        wanted = repr(key) if key is not None else f"one of {list(IMAGE_KEYS)} (or pass key=)"
        raise ValueError(f"key: {str(path)!r} holds {sorted(arrays)}; expected an image array named {wanted}")
    stored = {name: np.asarray(arrays[name], dtype=np.float64) for name in ("times", "extent") if name in arrays}
    return _as_float(path, arrays[names[0]]), stored


def _tifffile(path: Path):
    try:
        import tifffile
    except ImportError:
        raise MissingPackageError(f"path: {str(path)!r} is a TIFF stack, which needs the optional 'tifffile' "
                                  f"package: {_INSTALL_IMAGES}") from None
    return tifffile


def _read_tiff(path: Path) -> np.ndarray:
    tifffile = _tifffile(path)
    try:
        return tifffile.imread(path)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"path: {str(path)!r} is not a readable TIFF stack ({error})") from None


def read_image_metadata(path: Union[str, os.PathLike], shape: Optional[tuple] = None) -> ImageMetadata:
    """The calibration an image file stores (see the module docstring); ``shape`` ``(L, rows,
    columns)`` of its stack (read from the file when not given)."""
    path = Path(path)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        if shape is None:
            shape = read_images(path)[0].shape
        return _tiff_metadata(path, shape)
    arrays = read_plain_arrays(path)
    metadata = ImageMetadata()
    for name in ("times", "extent"):
        if name in arrays:
            setattr(metadata, name, np.asarray(arrays[name], dtype=np.float64))
            metadata.sources[name] = f"the file's '{name}' array"
    for name in ("time_unit", "length_unit"):
        if name in arrays and np.asarray(arrays[name]).dtype.kind == "U":
            setattr(metadata, name, str(np.asarray(arrays[name]).reshape(-1)[0]))
    return metadata


def _tiff_metadata(path: Path, shape: tuple) -> ImageMetadata:
    tifffile = _tifffile(path)
    metadata = ImageMetadata()
    try:
        with tifffile.TiffFile(path) as tiff:
            if tiff.is_ome and tiff.ome_metadata:
                _ome(tiff.ome_metadata, metadata)
            if tiff.is_imagej and metadata.times is None and metadata.extent is None:
                _imagej(tiff.imagej_metadata or {}, tiff.pages[0].tags, metadata)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"path: {str(path)!r} has unreadable TIFF metadata ({error})") from None
    frames = shape[0] if len(shape) >= 3 else 1
    if metadata.times is not None:  # the interval, as a scalar: times of every frame
        metadata.times = np.arange(frames) * float(metadata.times)
    if metadata.extent is not None:  # (width, height) of a pixel: the edges of the whole image
        width, height = metadata.extent
        metadata.extent = np.array([[0.0, 0.0], [shape[-1] * width, shape[-2] * height]])
    return metadata


_LENGTH_NAMES = {"micron": "um", "\\u00B5m": "um", "µm": "um", "um": "um", "nm": "nm", "mm": "mm",
                 "cm": "cm", "m": "m", "inch": "inch"}


def _positive(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _imagej(imagej: dict, tags, metadata: ImageMetadata) -> None:
    """ImageJ: ``finterval`` (unit ``tunit``, ImageJ's default seconds) and the resolution tags."""
    interval = _positive(imagej.get("finterval"))
    if interval is not None:
        metadata.times = interval
        metadata.time_unit = str(imagej.get("tunit") or "s").replace("sec", "s")
        metadata.sources["times"] = f"TIFF ImageJ metadata (finterval {interval:g} {metadata.time_unit})"
    unit = str(imagej.get("unit") or "").strip()
    sizes = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        value = getattr(tag, "value", None)
        per_unit = _positive(value[0] / value[1]) if isinstance(value, tuple) and len(value) == 2 and value[1] else None
        sizes.append(None if per_unit is None else 1.0 / per_unit)
    if unit and unit.lower() not in ("pixel", "pixels") and None not in sizes:
        metadata.extent = np.array(sizes)
        metadata.length_unit = _LENGTH_NAMES.get(unit, unit)
        metadata.sources["extent"] = (f"TIFF ImageJ metadata (pixel {sizes[0]:g} x {sizes[1]:g} "
                                      f"{metadata.length_unit})")


def _ome(text: str, metadata: ImageMetadata) -> None:
    """OME-XML: ``Pixels`` ``TimeIncrement`` and ``PhysicalSizeX/Y`` with their units (OME's defaults s, um)."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ValueError(f"OME-XML does not parse ({error})") from None
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return
    interval = _positive(pixels.get("TimeIncrement"))
    if interval is not None:
        metadata.times = interval
        metadata.time_unit = pixels.get("TimeIncrementUnit", "s")
        metadata.sources["times"] = f"TIFF OME metadata (TimeIncrement {interval:g} {metadata.time_unit})"
    sizes = [_positive(pixels.get("PhysicalSizeX")), _positive(pixels.get("PhysicalSizeY"))]
    if None not in sizes:
        unit = pixels.get("PhysicalSizeXUnit", "µm")
        metadata.extent = np.array(sizes)
        metadata.length_unit = _LENGTH_NAMES.get(unit, unit)
        metadata.sources["extent"] = f"TIFF OME metadata (pixel {sizes[0]:g} x {sizes[1]:g} {metadata.length_unit})"


def _as_float(path: Path, images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype.kind not in "fiu":
        raise ValueError(f"path: {str(path)!r}: the images hold {images.dtype} values, expected numbers")
    return images.astype(np.float64)
