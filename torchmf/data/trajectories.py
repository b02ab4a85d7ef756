"""Particle trajectories: the data container every method reads and writes.

A :class:`Trajectories` holds ``positions`` of shape ``(M, L, N, d)`` (experiments x recorded
times x particles x dimension), the recorded ``times`` of shape ``(L,)`` (always float64: frame
times such as ``1e4 + k dt`` must not be rounded to float32), optional per-particle extra state
(velocities, internal variables; each ``(M, L, N, k)``), a JSON-serializable ``meta`` dictionary
and an optional ``mask`` ``(M, L, N)`` of observed entries.

Missing data: tracked particles get lost, and frames hold different numbers of particles. Both are
one ``(M, L, N)`` boolean ``mask`` (True = observed); ``N`` is the largest count and the missing
entries of ``positions`` are NaN, so a method that does not understand masks fails on the NaN
instead of silently using a made-up position. Methods where a mask has a meaning honour it (the
WSINDy histogram weights each frame by its observed particles, particle observations for nudging
weight the observed ones); the others call :meth:`Trajectories.require_complete`, which raises.
A complete dataset has ``mask = None``.

Files are HDF5 (``.h5``/``.hdf5``, chunked and compressed) or ``.npz``; both are written atomically
and read without executing anything from the file. :meth:`Trajectories.load` also reads *plain*
files made outside torchmf: datasets/arrays named ``positions`` (``(M, L, N, d)`` or ``(L, N, d)``,
NaN for missing entries) and ``times`` (``(L,)``), optionally ``mask`` (``(M, L, N)`` or
``(L, N)``, nonzero = observed). Long-format tables (one row per particle and frame) are read by
:meth:`Trajectories.from_tracks`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .._validation import check_positive, check_tensor
from .trajectory_files import read_trajectory_file, write_trajectory_file

__all__ = ["Trajectories"]


class Trajectories:
    """Recorded particle ensembles.

    Arguments:
        positions: tensor (or numpy array) ``(M, L, N, d)``; a ``(L, N, d)`` one is read as one experiment.
        times: increasing ``(L,)`` recording times (stored as float64 on the positions' device).
        meta: JSON-serializable dictionary (system name, parameters, seed, ...).
        extras: optional mapping name -> tensor ``(M, L, N, k)`` of per-particle extra state.
        mask: optional boolean ``(M, L, N)`` (or ``(L, N)``), True where a particle was observed;
            the positions of the other entries are ignored (stored as NaN). An all-True mask is
            stored as ``None``. Every frame needs at least one observed particle.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        times: torch.Tensor,
        meta: Optional[Mapping] = None,
        extras: Optional[Mapping[str, torch.Tensor]] = None,
        mask: Optional[torch.Tensor] = None,
    ):
        if isinstance(positions, np.ndarray):
            positions = torch.from_numpy(positions)
        positions = check_tensor("positions", positions, finite=False)
        if mask is None and positions.is_floating_point() and not bool(torch.isfinite(positions).all()):
            bad = int((~torch.isfinite(positions)).sum())
            raise ValueError(f"positions: expected finite values, but found {bad} NaN/inf entries; for lost particles "
                             f"use Trajectories.from_arrays (NaN = lost) or pass mask=")
        if positions.ndim == 3:
            positions = positions.unsqueeze(0)
        if positions.ndim != 4:
            raise ValueError(
                "positions: expected shape (M, L, N, d) or (L, N, d), "
                f"but got shape {tuple(positions.shape)}"
            )
        if min(positions.shape) == 0:
            raise ValueError(f"positions: expected non-empty dimensions, but got shape {tuple(positions.shape)}")
        if isinstance(times, np.ndarray):
            times = torch.from_numpy(np.ascontiguousarray(times))
        times = check_tensor("times", torch.as_tensor(times, dtype=torch.float64, device=positions.device), ndim=1)
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
        self.mask = None if mask is None else _check_mask(mask, positions)
        if self.mask is not None:
            positions = positions.masked_fill(~self.mask.unsqueeze(-1), float("nan"))
        self.positions = positions
        self.times = times
        self.meta = meta
        self.extras = checked_extras

    # -- construction from user data -----------------------------------------------------------------
    @classmethod
    def from_arrays(cls, positions, times, mask=None, meta: Optional[Mapping] = None, dtype=None,
                    device=None) -> "Trajectories":
        """Trajectories from numpy or torch data, no conversion step.

        Arguments:
            positions: ``(M, L, N, d)``, ``(L, N, d)`` or ``(L, N)`` (1-D particles) array or tensor,
                NaN where a particle is missing; or a sequence of ``L`` frames ``(N_l, d)`` with
                different particle counts (padded to the largest count and masked).
            times: ``(L,)`` recording times (kept in float64).
            mask: optional ``(M, L, N)``/``(L, N)`` boolean, True = observed (combined with the NaN entries).
            meta: JSON-serializable dictionary.
            dtype: floating dtype of the positions (default: the input's floating dtype, float32 for integers).
            device: torch device.

        Returns:
            :class:`Trajectories` with ``mask`` set where entries are missing (``None`` when complete).
        """
        if isinstance(positions, (list, tuple)):
            positions, frame_mask = _pad_frames(positions)
            mask = frame_mask if mask is None else _as_bool_tensor("mask", mask) & frame_mask
        tensor = _as_float_tensor("positions", positions, dtype)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(-1)  # (L, N) of 1-D particles
        if tensor.ndim not in (3, 4):
            raise ValueError(f"positions: expected shape (M, L, N, d), (L, N, d) or (L, N), but got "
                             f"{tuple(tensor.shape)}")
        _refuse_infinite(tensor, "positions")
        present = torch.isfinite(tensor).all(-1)
        if mask is not None:
            given = _as_bool_tensor("mask", mask)
            if tuple(given.shape) != tuple(present.shape):
                raise ValueError(f"mask: expected shape {tuple(present.shape)} (positions without d), but got "
                                 f"{tuple(given.shape)}")
            present = present & given.to(present.device)
        complete = bool(present.all())
        return cls(tensor.to(device) if device is not None else tensor, times, meta,
                   mask=None if complete else present.to(device or tensor.device))

    @classmethod
    def from_tracks(cls, table, id: str = "particle", time: str = "frame",
                    columns: Optional[Sequence[str]] = None, experiment: Optional[str] = None,
                    dt: Optional[float] = None, meta: Optional[Mapping] = None, dtype=torch.float64) -> "Trajectories":
        """Trajectories from a long-format table: one row per particle and frame.

        Arguments:
            table: a CSV file path, a pandas DataFrame or a dict of equal-length columns.
            id: column of particle identities (any values; each distinct value is one particle).
            time: column of frames or times; its distinct values, sorted, are the recording times.
            columns: coordinate columns (default ``x, y, z`` as far as present).
            experiment: optional column of experiment labels (``M`` distinct values).
            dt: optional time step: the recording times become ``time value * dt``.
            meta: JSON-serializable dictionary (default: the source and column names).
            dtype: floating dtype of the positions (default float64).

        Returns:
            :class:`Trajectories` ``(M, L, N, d)`` with ``N`` the number of distinct identities and a
            ``mask`` for every (particle, frame) without a row or with a NaN coordinate. A repeated
            (experiment, particle, frame) row raises ``ValueError``.
        """
        from .tracks import tracks_to_arrays

        positions, times, mask, info = tracks_to_arrays(table, id, time, columns, experiment)
        if dt is not None:
            times = times * check_positive("dt", dt)
        meta = dict(meta or {}, **info)
        return cls.from_arrays(torch.from_numpy(positions).to(dtype), times, mask=torch.from_numpy(mask),
                               meta=meta)

    # -- masks -------------------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """True when no entry is missing (``mask is None``)."""
        return self.mask is None

    def counts(self) -> torch.Tensor:
        """Observed particles per experiment and frame: ``(M, L)`` long."""
        if self.mask is None:
            return torch.full(self.positions.shape[:2], self.n_particles, dtype=torch.long,
                              device=self.positions.device)
        return self.mask.sum(-1)

    def weights(self) -> torch.Tensor:
        """Empirical-measure weights ``(M, L, N)``: ``1 / n_observed`` on observed entries, 0 elsewhere."""
        if self.mask is None:
            return self.positions.new_full(self.positions.shape[:3], 1.0 / self.n_particles)
        mask = self.mask.to(self.positions.dtype)
        return mask / mask.sum(-1, keepdim=True)

    def filled_positions(self, value: Optional[float] = None) -> torch.Tensor:
        """Positions ``(M, L, N, d)`` with the missing entries filled, to pair with :meth:`weights`
        (whose zero weights make those entries irrelevant): with ``value``, or by default with an
        observed particle of the same frame (so every entry lies inside any box holding the data)."""
        if self.mask is None:
            return self.positions
        if value is not None:
            return self.positions.masked_fill(~self.mask.unsqueeze(-1), value)
        first = self.mask.to(torch.uint8).argmax(-1)  # an observed particle of every frame (guaranteed)
        anchor = torch.gather(self.positions, 2, first[..., None, None].expand(-1, -1, 1, self.dim))
        return torch.where(self.mask.unsqueeze(-1), self.positions, anchor)

    def require_complete(self, what: str) -> "Trajectories":
        """Raise ``ValueError`` if entries are missing: for methods where a mask has no meaning."""
        if self.mask is not None:
            missing = int((~self.mask).sum())
            raise ValueError(f"trajectories: {missing} of {self.mask.numel()} (experiment, frame, particle) entries "
                             f"are missing (mask), but {what} needs complete tracks with the same particles in "
                             f"every frame; select complete tracks (trajectories.mask.all(1)) or frames first")
        return self

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
            f"times={span}, extras={sorted(self.extras)}, meta keys={sorted(self.meta)}"
            + ("" if self.mask is None else f", missing={int((~self.mask).sum())}") + ")"
        )

    def snapshot(self, index: int) -> torch.Tensor:
        """Positions at recorded time ``index``: ``(M, N, d)``."""
        return self.positions[:, index]

    def to(self, *args, **kwargs) -> "Trajectories":
        """Move/cast positions and floating extras (same semantics as ``Tensor.to``); times stay float64."""
        positions = self.positions.to(*args, **kwargs)
        return Trajectories(
            positions,
            self.times.to(positions.device),
            self.meta,
            {k: (v.to(*args, **kwargs) if v.is_floating_point() else v) for k, v in self.extras.items()},
            None if self.mask is None else self.mask.to(positions.device),
        )

    # -- I/O -----------------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write to ``path`` (``.h5``/``.hdf5`` or ``.npz``) atomically; returns the path."""
        arrays = {"positions": self.positions, "times": self.times}
        if self.mask is not None:
            arrays["mask"] = self.mask
        arrays.update({f"extras/{k}": v for k, v in self.extras.items()})
        return write_trajectory_file(path, arrays, self.meta)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None) -> "Trajectories":
        """Read a file written by :meth:`save`, or a plain ``.npz``/``.h5`` holding ``positions``
        ``(M, L, N, d)``/``(L, N, d)`` (NaN = missing), ``times`` ``(L,)`` and optionally ``mask``
        (no code from the file is executed)."""
        arrays, meta = read_trajectory_file(path)
        _refuse_infinite(torch.from_numpy(arrays["positions"]), f"path: {str(path)!r}: dataset 'positions'")
        extras = {k[len("extras/"):]: torch.from_numpy(v).to(device) for k, v in arrays.items() if k.startswith("extras/")}
        try:
            if extras:
                return cls(torch.from_numpy(arrays["positions"]).to(device), torch.from_numpy(arrays["times"]),
                           meta, extras, None if "mask" not in arrays else torch.from_numpy(arrays["mask"]).to(device))
            return cls.from_arrays(arrays["positions"], arrays["times"], mask=arrays.get("mask"), meta=meta,
                                   device=device)
        except (ValueError, TypeError) as error:  # "times: ..." of the file's own arrays: name the file too
            raise type(error)(f"path: {str(path)!r}: {error}") from None


def _refuse_infinite(positions: torch.Tensor, where: str) -> None:
    """NaN marks a lost particle; +-inf is no position (an exporter's overflow or a division by zero):
    refused, not silently counted as lost. ``where`` starts the message (argument or file)."""
    if not positions.is_floating_point():
        return
    infinite = torch.isinf(positions)
    if bool(infinite.any()):
        first = [int(index) for index in infinite.nonzero()[0]]
        raise ValueError(f"{where}: {int(infinite.sum())} coordinates are +-inf (the first at index {first}); NaN "
                         "marks a lost particle, inf is not a position: replace them with NaN or fix the export")


def _as_float_tensor(name: str, value, dtype) -> torch.Tensor:
    """A floating tensor from numpy/torch/nested lists (integers become the default dtype unless ``dtype``)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a numeric array, but got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name}: expected a numpy array or torch tensor, but got {type(value).__name__} "
                            f"({error})") from None
    if dtype is not None:
        return value.to(dtype)
    return value if value.is_floating_point() else value.to(torch.get_default_dtype())


def _as_bool_tensor(name: str, value) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if tensor.dtype != torch.bool:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}: expected booleans (or 0/1), but found NaN/inf entries")
        tensor = tensor != 0
    return tensor


def _check_mask(mask, positions: torch.Tensor) -> Optional[torch.Tensor]:
    """Validated ``(M, L, N)`` mask on the positions' device, or None when nothing is missing."""
    mask = _as_bool_tensor("mask", mask).to(positions.device)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(positions.shape[:3]):
        raise ValueError(f"mask: expected shape {tuple(positions.shape[:3])} (M, L, N), but got {tuple(mask.shape)}")
    observed = positions[mask]
    if observed.numel() and not bool(torch.isfinite(observed).all()):
        bad = int((~torch.isfinite(observed)).any(-1).sum())
        raise ValueError(f"positions: {bad} entries marked observed by the mask hold NaN/inf coordinates")
    empty = ~mask.any(-1)
    if bool(empty.any()):
        experiment, frame = [int(v) for v in empty.nonzero()[0]]
        raise ValueError(f"mask: experiment {experiment}, frame {frame} has no observed particle (every position "
                         f"NaN or masked); drop such frames")
    return None if bool(mask.all()) else mask


def _pad_frames(frames):
    """``L`` frames ``(N_l, d)`` -> positions ``(L, N_max, d)`` (NaN padded) and mask ``(L, N_max)``."""
    tensors = [_as_float_tensor(f"positions[{i}]", frame, None) for i, frame in enumerate(frames)]
    if not tensors:
        raise ValueError("positions: expected at least one frame, but got an empty sequence")
    tensors = [t.unsqueeze(-1) if t.ndim == 1 else t for t in tensors]
    dims = {t.shape[-1] for t in tensors}
    if any(t.ndim != 2 for t in tensors) or len(dims) != 1:
        raise ValueError(f"positions: expected frames of shape (N_l, d) with one d, but got "
                         f"{[tuple(t.shape) for t in tensors]}")
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    largest = max(t.shape[0] for t in tensors)
    padded = torch.full((len(tensors), largest, dims.pop()), float("nan"), dtype=dtype)
    mask = torch.zeros(len(tensors), largest, dtype=torch.bool)
    for index, frame in enumerate(tensors):
        padded[index, :frame.shape[0]] = frame
        mask[index, :frame.shape[0]] = True
    return padded, mask
