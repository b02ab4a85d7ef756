"""One observed slow time series from a user's file, as the averaging methods read it.

:func:`read_series` accepts

- a CSV/TSV table with a time column and value columns (``time``, ``x`` by default);
- a plain ``.npz``/``.h5`` holding ``times`` (or ``t``) ``(L,)`` and the values ``x`` (or
  ``values``, ``series``) ``(L,)`` or ``(L, d)``;
- a torchmf trajectories file (or plain ``positions``) with one particle, ``(M, L, 1, d)``.

It returns the values ``(L, d)`` and the times ``(L,)`` (float64, strictly increasing), so that
``trainers.SlowPathDataModule(path="series.csv")`` needs no conversion step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["read_series", "SERIES_KEYS", "TIME_KEYS"]

SERIES_KEYS = ("x", "values", "series")
TIME_KEYS = ("times", "t", "time")


def read_series(path: Union[str, os.PathLike], time: str = "time", columns: Optional[Sequence[str]] = None,
                experiment: int = 0) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Read one slow path.

    Arguments:
        path: ``.csv``/``.tsv``/``.txt`` table, ``.npz`` or ``.h5``/``.hdf5`` file.
        time: time column of a table (default ``time``).
        columns: value columns of a table (default: every column but ``time``).
        experiment: which experiment of a trajectories file (``M`` paths) to read.

    Returns:
        ``(values (L, d) float64, times (L,) float64, meta)``; ``meta`` is the trajectories file's
        (system, parameters) when there is one, else ``{}``.
    """
    from .files import read_plain_arrays
    from .trajectories import Trajectories
    from .tables import numbers, read_table

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        table = read_table(path, "path")
        if time not in table.columns:
            raise ValueError(f"time: column {time!r} not found in {str(path)!r}; columns are {sorted(table.columns)}")
        columns = [name for name in table.columns if name != time] if columns is None else list(columns)
        missing = [name for name in columns if name not in table.columns]
        if missing or not columns:
            raise ValueError(f"columns: {missing or 'no value column'} not found in {str(path)!r} "
                             f"({sorted(table.columns)})")
        # a slow path must be complete: every cell a finite number, the first bad one named by column and row
        values = np.stack([numbers(table, name, "columns", missing=False) for name in columns], -1)
        return _checked(path, values, numbers(table, time, "time", missing=False), {})
    if suffix not in (".npz", ".h5", ".hdf5"):
        raise ValueError(f"path: expected a .csv, .tsv, .txt, .npz, .h5 or .hdf5 series, but got {str(path)!r}")
    arrays = read_plain_arrays(path)
    if "positions" in arrays:
        data = Trajectories.load(path)
        if data.n_particles != 1:
            raise ValueError(f"path: expected one slow path per experiment (N = 1), but got N = {data.n_particles}")
        if not 0 <= experiment < data.n_experiments:
            raise ValueError(f"experiment: expected 0 <= experiment < {data.n_experiments}, but got {experiment}")
        values = data.positions[experiment, :, 0].double().cpu().numpy()
        return _checked(path, values, data.times.cpu().numpy(), data.meta)
    value_key = next((key for key in SERIES_KEYS if key in arrays), None)
    time_key = next((key for key in TIME_KEYS if key in arrays), None)
    if value_key is None or time_key is None:
        raise ValueError(f"path: {str(path)!r} holds {sorted(arrays)}; expected values named one of {list(SERIES_KEYS)} "
                         f"and times named one of {list(TIME_KEYS)} (or 'positions' and 'times')")
    values = np.asarray(arrays[value_key], dtype=np.float64)
    return _checked(path, values.reshape(values.shape[0], -1) if values.ndim else values,
                    np.asarray(arrays[time_key], dtype=np.float64), {})


def _checked(path: Path, values: np.ndarray, times: np.ndarray, meta: dict):
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or times.ndim != 1 or values.shape[0] != times.shape[0]:
        raise ValueError(f"path: {str(path)!r}: expected values (L,) or (L, d) and times (L,), but got "
                         f"{values.shape} and {times.shape}")
    if values.shape[0] < 2:
        raise ValueError(f"path: {str(path)!r} holds {values.shape[0]} time points; a path needs at least 2")
    bad = int((~np.isfinite(values)).any(-1).sum() + (~np.isfinite(times)).sum())
    if bad:
        raise ValueError(f"path: {str(path)!r} has {bad} NaN/inf entries; a slow path must be complete")
    if not (np.diff(times) > 0).all():
        index = int(np.flatnonzero(np.diff(times) <= 0)[0]) + 1
        raise ValueError(f"path: {str(path)!r}: times must be strictly increasing, but time point {index + 1} "
                         f"({times[index]:g}) does not come after time point {index} ({times[index - 1]:g})")
    return torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(np.ascontiguousarray(times)), dict(meta)
