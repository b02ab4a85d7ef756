"""Long-format particle tables (one row per particle and frame) to dense masked arrays.

Tracking software writes tracks as a table with a particle identity column, a frame (or time)
column and coordinate columns, e.g. a CSV ``particle,frame,x,y``. :func:`tracks_to_arrays` turns
such a table -- a CSV path, a pandas DataFrame or a dict of columns -- into positions
``(M, L, N, d)`` with NaN where a particle was not seen, the sorted distinct frame values ``(L,)``
and the observation mask ``(M, L, N)``; :meth:`torchmf.Trajectories.from_tracks` wraps it.
CSV files are read with the standard library's ``csv`` module (values only, nothing executed).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["tracks_to_arrays", "read_columns"]

_DEFAULT_COORDINATES = ("x", "y", "z")


def read_columns(table) -> Tuple[Dict[str, np.ndarray], str]:
    """Columns of a CSV path, a pandas DataFrame or a dict of sequences: ``({name: array (R,)}, source)``."""
    if isinstance(table, (str, os.PathLike)):
        return _read_csv(Path(table)), Path(table).name
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):  # a pandas DataFrame (pandas stays optional)
        return {str(name): table[name].to_numpy() for name in table.columns}, "DataFrame"
    if isinstance(table, dict):
        columns = {str(name): np.asarray(values) for name, values in table.items()}
        lengths = {name: values.shape for name, values in columns.items()}
        if any(len(shape) != 1 for shape in lengths.values()) or len({s[0] for s in lengths.values()}) > 1:
            raise ValueError(f"table: expected equal-length 1-D columns, but got shapes {lengths}")
        return columns, "dict"
    raise TypeError(f"table: expected a CSV path, a pandas DataFrame or a dict of columns, but got "
                    f"{type(table).__name__}")


def _read_csv(path: Path) -> Dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"table: no such file {str(path)!r}")
    with open(path, newline="") as handle:
        sample = handle.read(4096)
        handle.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t ")
        except csv.Error:
            dialect = csv.excel
        rows = list(csv.reader(handle, dialect))
    rows = [row for row in rows if row and not row[0].lstrip().startswith("#")]
    if len(rows) < 2:
        raise ValueError(f"table: {str(path)!r} needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    body = rows[1:]
    widths = {len(row) for row in body}
    if widths != {len(header)}:
        raise ValueError(f"table: {str(path)!r} has rows of {sorted(widths)} fields but a header of {len(header)}")
    columns = {}
    for index, name in enumerate(header):
        values = [row[index].strip() for row in body]
        columns[name] = _numeric_or_text(values)
    return columns


def _numeric_or_text(values):
    """Floats where every entry parses (empty or ``nan`` -> NaN), else the strings themselves."""
    try:
        return np.array([float(v) if v not in ("", "NA", "NaN", "nan") else np.nan for v in values])
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
    data, source = read_columns(table)
    if columns is None:
        columns = [name for name in _DEFAULT_COORDINATES if name in data]
    columns = list(columns)
    wanted = {"id": id, "time": time, **({"experiment": experiment} if experiment else {})}
    missing = [name for name in list(wanted.values()) + columns if name not in data]
    if missing or not columns:
        raise ValueError(f"table: expected columns {list(wanted.values()) + (columns or ['x', ...])}, but "
                         f"{missing or 'no coordinate column'} not found among {sorted(data)}")
    frames = np.asarray(data[time])
    if frames.dtype.kind not in "fiu" or not np.isfinite(frames.astype(float)).all():
        raise ValueError(f"time: column {time!r} must hold finite numbers (frame numbers or times)")
    coordinates = np.stack([np.asarray(data[name], dtype=float) for name in columns], -1)  # (R, d)
    times, frame_index = np.unique(frames.astype(np.float64), return_inverse=True)
    _, particle_index = np.unique(np.asarray(data[id]).astype(str), return_inverse=True)
    if experiment:
        _, experiment_index = np.unique(np.asarray(data[experiment]).astype(str), return_inverse=True)
    else:
        experiment_index = np.zeros_like(frame_index)
    shape = (int(experiment_index.max()) + 1, times.size, int(particle_index.max()) + 1)
    flat = np.ravel_multi_index((experiment_index, frame_index, particle_index), shape)
    if np.unique(flat).size != flat.size:
        raise ValueError(f"table: some (particle, frame) pairs appear in several rows; expected one row per "
                         f"particle {id!r} and frame {time!r}")
    positions = np.full(shape + (len(columns),), np.nan)
    positions.reshape(-1, len(columns))[flat] = coordinates
    mask = np.isfinite(positions).all(-1)
    info = {"source": source, "columns": {"id": id, "time": time, "coordinates": columns,
                                          "experiment": experiment}}
    return positions, times, mask, info
