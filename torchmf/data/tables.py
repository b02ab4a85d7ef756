"""A delimited text table (CSV, TSV, whitespace) read as text columns, every problem located.

:func:`read_table` reads a file with the standard library's ``csv`` module (values only, nothing
executed) into a :class:`Table`: the header's names, one text column per name and the file line of
each data row. :func:`numbers` and :func:`labels` turn a column into float64 values or exact
identities; each error is one line naming the file, the column, the row (and its line) and the fix.
Tables given in memory (a pandas DataFrame, a dict of columns) become a :class:`Table` too
(:func:`as_table`), their rows numbered from 0.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

__all__ = ["Table", "read_table", "as_table", "numbers", "labels", "MISSING"]

#: Text read as "no value" (NaN) in a numeric column.
MISSING = ("", "NA", "NaN", "nan", "NAN")
_INTEGER = re.compile(r"^[+-]?\d+$")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


@dataclass
class Table:
    """Columns of one table. ``columns``: ``{name: array (R,)}`` (text for a file); ``lines``: the
    1-based file line of each row (None for a table given in memory); ``source``: its name in messages."""
    columns: Dict[str, np.ndarray]
    source: str
    lines: Optional[np.ndarray] = None

    def where(self, row: int) -> str:
        """``row 3 (line 5)`` of a file (rows counted from 1 after the header), ``row 2`` in memory."""
        return f"row {row + 1} (line {int(self.lines[row])})" if self.lines is not None else f"row {row}"


def read_table(path, argument: str = "table") -> Table:
    """Read a delimited text file (UTF-8, optional byte-order mark; ``#`` comment lines skipped).

    Raises ``FileNotFoundError``/``IsADirectoryError``, or ``ValueError`` naming ``argument``, the
    file and the line: a field over the csv module's size limit, a NUL byte, text that is not UTF-8,
    rows of another width than the header, a repeated or empty column name."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, f"{argument}: expected a table file (.csv, .tsv, .txt), but this is a folder",
                                str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: no such file {str(path)!r}")
    name = repr(str(path))
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            dialect = _dialect(handle.read(4096))
            handle.seek(0)
            reader = csv.reader(handle, dialect)
            finished = 0  # the line the last whole row ended on: a bad row starts on the next one
            try:
                for row in reader:
                    finished = reader.line_num
                    if row and not row[0].lstrip().startswith("#"):
                        rows.append(row)
                        lines.append(reader.line_num)
            except csv.Error as error:
                raise ValueError(f"{argument}: {name}, the row from line {finished + 1}: {_csv_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{argument}: {name} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                         f"{error.start}); save the table as UTF-8 CSV") from None
    if len(rows) < 2:
        raise ValueError(f"{argument}: {name} needs a header row and at least one data row, but has {len(rows)} "
                         "non-empty row(s)")
    header = [field.strip() for field in rows[0]]
    _check_header(header, name, argument)
    for row, line in zip(rows[1:], lines[1:]):
        if len(row) != len(header):
            raise ValueError(f"{argument}: {name} line {line} has {len(row)} fields, but the header has "
                             f"{len(header)} ({', '.join(header)}); check the delimiter and quoting")
    body = np.array([[field.strip() for field in row] for row in rows[1:]], dtype=str).reshape(-1, len(header))
    return Table({column: body[:, index] for index, column in enumerate(header)}, name, np.array(lines[1:]))


def _dialect(sample: str):
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t ")
    except csv.Error:
        return csv.excel


def _csv_problem(error: csv.Error) -> str:
    text = str(error)
    if "field larger than field limit" in text:
        return (f"a field is longer than {csv.field_size_limit()} characters (the csv module's limit); check the "
                "delimiter and the quotes (an unclosed quote swallows the rest of the file), or that this is a table")
    if "NUL" in text:
        return "holds a NUL byte; this is a binary file, not a text table"
    return f"{text}; check the delimiter and the quotes"


def _check_header(header, name: str, argument: str) -> None:
    if any(not column for column in header):
        raise ValueError(f"{argument}: {name} has an empty column name in its header ({header}); name every column")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ValueError(f"{argument}: {name} names the column(s) {repeated} more than once; expected unique names")


def as_table(table, argument: str = "table") -> Table:
    """A :class:`Table` from a file path, a pandas DataFrame or a dict of equal-length 1-D columns."""
    import os

    if isinstance(table, Table):
        return table
    if isinstance(table, (str, os.PathLike)):
        return read_table(table, argument)
    if hasattr(table, "columns") and hasattr(table, "to_numpy"):  # a pandas DataFrame (pandas stays optional)
        return Table({str(name): table[name].to_numpy() for name in table.columns}, "DataFrame")
    if isinstance(table, dict):
        columns = {str(name): np.asarray(values) for name, values in table.items()}
        shapes = {name: values.shape for name, values in columns.items()}
        if any(len(shape) != 1 for shape in shapes.values()) or len({s[0] for s in shapes.values()}) > 1:
            raise ValueError(f"{argument}: expected equal-length 1-D columns, but got shapes {shapes}")
        return Table(columns, "dict")
    raise TypeError(f"{argument}: expected a CSV path, a pandas DataFrame or a dict of columns, but got "
                    f"{type(table).__name__}")


def numbers(table: Table, column: str, argument: str, missing: bool = True, infinite: bool = False) -> np.ndarray:
    """Column ``column`` as float64 ``(R,)``. ``missing``: empty/NA/NaN cells read as NaN (else refused);
    ``infinite``: +-inf accepted (else refused). ``ValueError`` names the file, column and row."""
    values = table.columns[column]
    if values.dtype.kind in "fiub":
        result = values.astype(np.float64)
        text = None
    else:
        text = values.astype(str)
        result = np.empty(text.shape, np.float64)
        for row, cell in enumerate(text):
            cell = cell.strip()
            try:
                result[row] = np.nan if cell in MISSING else float(cell)
            except ValueError:
                raise ValueError(f"{argument}: {table.source} column {column!r}, {table.where(row)}: {cell!r} is not "
                                 "a number; expected numbers (an empty cell or NaN where there is no value)") from None
    if not missing and np.isnan(result).any():
        row = int(np.flatnonzero(np.isnan(result))[0])
        raise ValueError(f"{argument}: {table.source} column {column!r}, {table.where(row)} is empty or NaN; this "
                         "column needs a number in every row")
    if not infinite and np.isinf(result).any():
        rows = np.flatnonzero(np.isinf(result))
        cell = str(text[rows[0]]).strip() if text is not None else float(result[rows[0]])
        raise ValueError(f"{argument}: {table.source} column {column!r}, {table.where(int(rows[0]))}: {cell!r} is "
                         f"infinite ({rows.size} such row{'s' if rows.size > 1 else ''}); expected finite numbers (leave a cell empty or NaN "
                         "where there is no value)")
    return result


def labels(table: Table, column: str, argument: str) -> np.ndarray:
    """Column ``column`` as exact identities ``(R,)``: int64 when every cell is an integer that fits
    (``7``, ``+7`` and ``007`` are the same particle; 2^53 and 2^53 + 1 stay apart), else the text
    itself. Floats given in memory keep their exact decimal text. Empty cells are refused."""
    values = table.columns[column]
    if values.dtype.kind in "iu" and (values.dtype.kind == "i" or values.size == 0 or values.max() <= _INT64[1]):
        return values.astype(np.int64)
    if values.dtype.kind in "fc":
        text = np.array([repr(value) if value != int(value) else str(int(value)) for value in values.tolist()]) \
            if np.isfinite(values).all() else None
        if text is None:
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{argument}: {table.source} column {column!r}, {table.where(row)}: {values[row]} is not "
                             "an identity; expected a label or an integer in every row")
    else:
        text = np.array([str(value).strip() for value in values.tolist()])
    empty = np.flatnonzero(text == "")
    if empty.size:
        raise ValueError(f"{argument}: {table.source} column {column!r}, {table.where(int(empty[0]))} is empty; every "
                         "row needs an identity")
    if all(_INTEGER.match(cell) for cell in text):
        integers = [int(cell) for cell in text]
        if _INT64[0] <= min(integers) and max(integers) <= _INT64[1]:
            return np.array(integers, dtype=np.int64)
        return np.array([str(value) for value in integers])  # canonical text: exact beyond int64 too
    return text
