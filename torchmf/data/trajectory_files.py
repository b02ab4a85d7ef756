"""The trajectories file format: ``.h5``/``.hdf5`` (chunked, compressed) or ``.npz``.

A file holds the arrays ``positions`` ``(M, L, N, d)``, ``times`` ``(L,)``, optionally ``mask``
``(M, L, N)`` and ``extras/NAME`` ``(M, L, N, k)``, and a JSON header ``{"format", "version",
"meta"}``. Files are written atomically (:func:`~torchmf.data.files.atomic_path`) and read without
executing anything from them; a *plain* file made outside torchmf (no header) reads as version 1
with ``meta = {"source": file name}``. :class:`~torchmf.data.trajectories.Trajectories` turns the
arrays into a container (:meth:`~torchmf.data.trajectories.Trajectories.save` / ``load``).
"""
from __future__ import annotations

import errno
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import numpy as np
import torch

from .files import atomic_path, npz_problem, read_hdf5_array

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_trajectory_file", "read_trajectory_file"]

FORMAT_NAME = "torchmf.trajectories"
FORMAT_VERSION = 1
_HDF5_SUFFIXES = {".h5", ".hdf5"}


def write_trajectory_file(path: Union[str, os.PathLike], arrays: Mapping[str, torch.Tensor], meta: dict) -> Path:
    """Write ``arrays`` (names as above, tensors) and ``meta`` to ``path`` atomically; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _HDF5_SUFFIXES | {".npz"}:
        raise ValueError(f"path: expected a .h5, .hdf5 or .npz file name, but got {str(path)!r}")
    arrays = {name: _numpy(value) for name, value in arrays.items()}
    header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": meta})
    with atomic_path(path, suffix=suffix) as temporary:
        if suffix == ".npz":
            arrays = {k.replace("/", "__"): v for k, v in arrays.items()}
            with open(temporary, "wb") as handle:
                np.savez_compressed(handle, header=np.array(header), **arrays)
        else:
            _write_hdf5(temporary, arrays, header)
    return path


def read_trajectory_file(path: Union[str, os.PathLike]) -> Tuple[Dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a trajectories file or a plain one; ``arrays`` holds at least
    ``positions`` and ``times``. Raises ``ValueError`` naming ``path`` for anything else."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "path: expected a trajectories file, but this is a folder", str(path))
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays, header = _read_npz(path)
    elif suffix in _HDF5_SUFFIXES:
        arrays, header = _read_hdf5(path)
    else:
        raise ValueError(f"path: expected a .h5, .hdf5 or .npz file name, but got {str(path)!r}")
    if header is None:  # a plain file made outside torchmf
        header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                             "meta": {"source": path.name}})
    try:
        header = json.loads(header)
    except json.JSONDecodeError:
        raise ValueError(f"path: {str(path)!r} has a corrupt header (not JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("version", 0), int) \
            or not isinstance(header.get("meta", {}), dict):
        raise ValueError(f"path: {str(path)!r} has a corrupt header (expected a JSON object with an integer "
                         "'version' and a 'meta' object)")
    if header.get("format") != FORMAT_NAME:
        raise ValueError(f"path: {str(path)!r} is not a torchmf trajectories file")
    if header.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"path: {str(path)!r} has format version {header['version']}, newer than {FORMAT_VERSION}")
    if "positions" not in arrays or "times" not in arrays:
        raise ValueError(f"path: {str(path)!r} lacks 'positions' or 'times' (found {sorted(arrays)}); a plain file "
                         f"needs arrays named 'positions' (M, L, N, d) or (L, N, d) and 'times' (L,)")
    return arrays, header.get("meta", {})


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _write_hdf5(path: Path, arrays: Dict[str, np.ndarray], header: str) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle.attrs["header"] = header
        for name, array in arrays.items():
            chunks = None
            if array.ndim == 4:
                # one chunk = one experiment at one time: cheap snapshot reads
                chunks = (1, 1) + tuple(array.shape[2:])
            handle.create_dataset(name, data=array, chunks=chunks, compression="gzip" if chunks else None,
                                  compression_opts=4 if chunks else None, shuffle=bool(chunks),
                                  track_times=False)


def _read_hdf5(path: Path):
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            header = handle.attrs.get("header")  # None: a plain file made outside torchmf
            arrays = {"positions": read_hdf5_array(handle, "positions", path),
                      "times": read_hdf5_array(handle, "times", path)}
            if "mask" in handle:
                arrays["mask"] = read_hdf5_array(handle, "mask", path)
            if "extras" in handle:
                if not isinstance(handle.get("extras", getlink=True), h5py.HardLink):
                    raise ValueError(f"path: {str(path)!r}: 'extras' is a link to another location; refused")
                if not isinstance(handle["extras"], h5py.Group):
                    raise ValueError(f"path: {str(path)!r}: 'extras' is a {type(handle['extras']).__name__}, expected "
                                     "a group of datasets extras/NAME (M, L, N, k); move the data into such a group "
                                     "or delete 'extras'")
                for key in handle["extras"]:
                    arrays[f"extras/{key}"] = read_hdf5_array(handle["extras"], key, path)
    except OSError as error:
        raise ValueError(f"path: {str(path)!r} is not a readable HDF5 file ({error})") from None
    except KeyError as error:
        raise ValueError(f"path: {str(path)!r} lacks dataset {error}") from None
    if isinstance(header, bytes):
        header = header.decode("utf-8", errors="replace")
    if header is not None and not isinstance(header, str):
        raise ValueError(f"path: {str(path)!r} has a corrupt header (a {type(header).__name__}, not JSON text)")
    return arrays, header


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k.replace("__", "/"): data[k] for k in data.files if k != "header"}
            header = str(data["header"]) if "header" in data.files else None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        # a truncated or foreign file: zip, zlib and numpy each raise their own type
        raise ValueError(f"path: {str(path)!r} is not a readable npz file ({npz_problem(error)})") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "fiub":
            raise ValueError(f"path: {str(path)!r}: {name!r} holds {array.dtype} values, expected numbers")
    return arrays, header  # header None: a plain file made outside torchmf
