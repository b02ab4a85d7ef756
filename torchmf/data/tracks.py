"""Long-format particle tables (one row per particle and frame) to dense masked arrays.

Tracking software writes tracks as a table with a particle identity column, a frame (or time)
column and coordinate columns, e.g. a CSV ``particle,frame,x,y``. :func:`tracks_to_arrays` turns
such a table -- a CSV path, a pandas DataFrame or a dict of columns -- into positions
``(M, L, N, d)`` with NaN where a particle was not seen, the sorted distinct frame values ``(L,)``
and the observation mask ``(M, L, N)``; :meth:`torchmf.Trajectories.from_tracks` wraps it.
CSV files are read by :mod:`torchmf.data.tables` (the ``csv`` module: values only, nothing executed);
every error names the file, the column and the row. Identities are read exactly (integers as int64,
anything else as text), coordinates must be finite numbers or empty/NaN (not seen).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .tables import MISSING, as_table, labels, numbers

__all__ = ["tracks_to_arrays", "read_columns"]

_DEFAULT_COORDINATES = ("x", "y", "z")


def read_columns(table) -> Tuple[Dict[str, np.ndarray], str]:
    """Columns of a CSV path, a pandas DataFrame or a dict of sequences: ``({name: array (R,)}, source)``;
    a file's columns are floats where every cell parses (empty or ``nan`` -> NaN), else text."""
    read = as_table(table)
    if read.lines is None:
        return read.columns, read.source
    return {name: _numeric_or_text(values) for name, values in read.columns.items()}, Path(table).name


def _numeric_or_text(values):
    """Floats where every entry parses (empty or ``nan`` -> NaN), else the strings themselves."""
    try:
        return np.array([float(v) if v not in MISSING else np.nan for v in values])
    except ValueError:
        return np.array(values)


def tracks_to_arrays(table, id: str = "particle", time: str = "frame", columns: Optional[Sequence[str]] = None,
                     experiment: Optional[str] = None):
    """Dense arrays from a long-format table.

    Arguments:
        table: CSV path, pandas DataFrame or dict of columns (one row per particle and frame).
        id: identity column; time: frame/time column; columns: coordinate columns (default ``x, y, z``
            as far as present); experiment: optional experiment column.

    Returns:
        ``positions (M, L, N, d)`` float64 (NaN = not seen), ``times (L,)`` float64 (sorted distinct
        values of ``time``), ``mask (M, L, N)`` bool, and a dict describing the source.
    """
    read = as_table(table)
    data = read.columns
    if columns is None:
        columns = [name for name in _DEFAULT_COORDINATES if name in data]
    columns = list(columns)
    wanted = {"id": id, "time": time, **({"experiment": experiment} if experiment else {})}
    missing = [name for name in list(wanted.values()) + columns if name not in data]
    if missing or not columns:
        named = ", ".join(f"{argument}={name!r}" for argument, name in wanted.items())
        raise ValueError(f"table: {read.source} has no column(s) {missing or 'x/y/z'} (columns found: {sorted(data)}); "
                         f"name them with {named}, columns=[...]")
    frames = numbers(read, time, "time", missing=False)
    coordinates = np.stack([numbers(read, name, "columns") for name in columns], -1)  # (R, d)
    times, frame_index = np.unique(frames.astype(np.float64), return_inverse=True)
    _, particle_index = np.unique(labels(read, id, "id"), return_inverse=True)
    if experiment:
        _, experiment_index = np.unique(labels(read, experiment, "experiment"), return_inverse=True)
    else:
        experiment_index = np.zeros_like(frame_index)
    shape = (int(experiment_index.max()) + 1, times.size, int(particle_index.max()) + 1)
    flat = np.ravel_multi_index((experiment_index, frame_index, particle_index), shape)
    _check_one_row_each(read, flat, id, time)
    positions = np.full(shape + (len(columns),), np.nan)
    positions.reshape(-1, len(columns))[flat] = coordinates
    mask = np.isfinite(positions).all(-1)
    source = Path(table).name if read.lines is not None else read.source
    info = {"source": source, "columns": {"id": id, "time": time, "coordinates": columns,
                                          "experiment": experiment}}
    return positions, times, mask, info


def _check_one_row_each(read, flat: np.ndarray, id: str, time: str) -> None:
    """Refuse a (experiment, particle, frame) given in two rows, naming both rows."""
    order = np.argsort(flat, kind="stable")
    repeated = np.flatnonzero(flat[order][1:] == flat[order][:-1])
    if repeated.size:
        first, second = int(order[repeated[0]]), int(order[repeated[0] + 1])
        raise ValueError(f"table: {read.source} {read.where(first)} and {read.where(second)} give the same particle "
                         f"({id!r} = {read.columns[id][first]}) at the same frame ({time!r} = "
                         f"{read.columns[time][first]}); expected one row per particle and frame ({repeated.size} "
                         "repeated row(s))")
