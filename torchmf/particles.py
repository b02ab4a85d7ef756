"""Particle trajectories: the data container every method reads and writes.

A :class:`Trajectories` holds ``positions`` of shape ``(M, L, N, d)`` (experiments x recorded
times x particles x dimension), the recorded ``times`` of shape ``(L,)``, optional per-particle
extra state (velocities, internal variables; each ``(M, L, N, k)``) and a JSON-serializable
``meta`` dictionary. Files are HDF5 (``.h5``/``.hdf5``, chunked and compressed) or ``.npz``;
both are written atomically and read without executing anything from the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch

from ._io import atomic_path
from ._validation import check_tensor

__all__ = ["Trajectories"]

FORMAT_NAME = "torchmf.trajectories"
FORMAT_VERSION = 1
_HDF5_SUFFIXES = {".h5", ".hdf5"}


class Trajectories:
    """Recorded particle ensembles.

    Arguments:
        positions: tensor ``(M, L, N, d)``; a ``(L, N, d)`` tensor is read as one experiment.
        times: increasing tensor ``(L,)`` of recording times.
        meta: JSON-serializable dictionary (system name, parameters, seed, ...).
        extras: optional mapping name -> tensor ``(M, L, N, k)`` of per-particle extra state.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        times: torch.Tensor,
        meta: Optional[Mapping] = None,
        extras: Optional[Mapping[str, torch.Tensor]] = None,
    ):
        positions = check_tensor("positions", positions)
        if positions.ndim == 3:
            positions = positions.unsqueeze(0)
        if positions.ndim != 4:
            raise ValueError(
                "positions: expected shape (M, L, N, d) or (L, N, d), "
                f"but got shape {tuple(positions.shape)}"
            )
        if min(positions.shape) == 0:
            raise ValueError(f"positions: expected non-empty dimensions, but got shape {tuple(positions.shape)}")
        times = check_tensor("times", torch.as_tensor(times, dtype=positions.dtype, device=positions.device), ndim=1)
        if times.shape[0] != positions.shape[1]:
            raise ValueError(
                f"times: expected {positions.shape[1]} entries to match positions.shape[1], but got {times.shape[0]}"
            )
        if times.shape[0] > 1 and not bool((times[1:] > times[:-1]).all()):
            raise ValueError("times: expected strictly increasing recording times, but they are not")
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except TypeError as error:
            raise TypeError(f"meta: expected a JSON-serializable dictionary ({error})") from None
        checked_extras: Dict[str, torch.Tensor] = {}
        for name, value in (extras or {}).items():
            value = check_tensor(f"extras[{name!r}]", value, ndim=4, floating=False)
            if tuple(value.shape[:3]) != tuple(positions.shape[:3]):
                raise ValueError(
                    f"extras[{name!r}]: expected leading shape {tuple(positions.shape[:3])} (M, L, N), "
                    f"but got {tuple(value.shape)}"
                )
            checked_extras[str(name)] = value
        self.positions = positions
        self.times = times
        self.meta = meta
        self.extras = checked_extras

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_experiments(self) -> int:
        return self.positions.shape[0]

    @property
    def n_times(self) -> int:
        return self.positions.shape[1]

    @property
    def n_particles(self) -> int:
        return self.positions.shape[2]

    @property
    def dim(self) -> int:
        return self.positions.shape[3]

    def __repr__(self) -> str:
        span = f"{float(self.times[0]):g}..{float(self.times[-1]):g}"
        return (
            f"Trajectories(M={self.n_experiments}, L={self.n_times}, N={self.n_particles}, d={self.dim}, "
            f"times={span}, extras={sorted(self.extras)}, meta keys={sorted(self.meta)})"
        )

    def snapshot(self, index: int) -> torch.Tensor:
        """Positions at recorded time ``index``: ``(M, N, d)``."""
        return self.positions[:, index]

    def to(self, *args, **kwargs) -> "Trajectories":
        """Move/cast positions, times and floating extras (same semantics as ``Tensor.to``)."""
        return Trajectories(
            self.positions.to(*args, **kwargs),
            self.times.to(*args, **kwargs),
            self.meta,
            {k: (v.to(*args, **kwargs) if v.is_floating_point() else v) for k, v in self.extras.items()},
        )

    # -- I/O -----------------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write to ``path`` (``.h5``/``.hdf5`` or ``.npz``) atomically; returns the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _HDF5_SUFFIXES | {".npz"}:
            raise ValueError(f"path: expected a .h5, .hdf5 or .npz file name, but got {str(path)!r}")
        arrays = {"positions": _numpy(self.positions), "times": _numpy(self.times)}
        arrays.update({f"extras/{k}": _numpy(v) for k, v in self.extras.items()})
        header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": self.meta})
        with atomic_path(path, suffix=suffix) as temporary:
            if suffix == ".npz":
                arrays = {k.replace("/", "__"): v for k, v in arrays.items()}
                with open(temporary, "wb") as handle:
                    np.savez_compressed(handle, header=np.array(header), **arrays)
            else:
                _write_hdf5(temporary, arrays, header)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None) -> "Trajectories":
        """Read a file written by :meth:`save` (no code from the file is executed)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no such file {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            arrays, header = _read_npz(path)
        elif suffix in _HDF5_SUFFIXES:
            arrays, header = _read_hdf5(path)
        else:
            raise ValueError(f"path: expected a .h5, .hdf5 or .npz file name, but got {str(path)!r}")
        try:
            header = json.loads(header)
        except json.JSONDecodeError:
            raise ValueError(f"path: {str(path)!r} has a corrupt header (not JSON)") from None
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"path: {str(path)!r} is not a torchmf trajectories file")
        if header.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"path: {str(path)!r} has format version {header['version']}, newer than {FORMAT_VERSION}")
        if "positions" not in arrays or "times" not in arrays:
            raise ValueError(f"path: {str(path)!r} lacks 'positions' or 'times'")
        extras = {k[len("extras/"):]: torch.from_numpy(v).to(device) for k, v in arrays.items() if k.startswith("extras/")}
        return cls(
            torch.from_numpy(arrays["positions"]).to(device),
            torch.from_numpy(arrays["times"]).to(device),
            header.get("meta", {}),
            extras,
        )


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
            header = handle.attrs.get("header")
            if header is None:
                raise ValueError(f"path: {str(path)!r} is not a torchmf trajectories file (no header)")
            arrays = {"positions": handle["positions"][()], "times": handle["times"][()]}
            if "extras" in handle:
                for key in handle["extras"]:
                    arrays[f"extras/{key}"] = handle["extras"][key][()]
    except OSError as error:
        raise ValueError(f"path: {str(path)!r} is not a readable HDF5 file ({error})") from None
    except KeyError as error:
        raise ValueError(f"path: {str(path)!r} lacks dataset {error}") from None
    return arrays, header if isinstance(header, str) else header.decode()


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k.replace("__", "/"): data[k] for k in data.files if k != "header"}
            header = str(data["header"]) if "header" in data.files else None
    except (OSError, ValueError) as error:
        raise ValueError(f"path: {str(path)!r} is not a readable npz file ({error})") from None
    if header is None:
        raise ValueError(f"path: {str(path)!r} is not a torchmf trajectories file (no header)")
    return arrays, header
