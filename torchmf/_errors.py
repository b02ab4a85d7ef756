"""User-caused errors of both command lines (``torchmf`` and ``torchmf-train``), as one line.

:func:`user_message` decides whether an exception was caused by the user's input (a bad value,
a missing or unreadable file, a malformed YAML/zip/HDF5 file, a request too large for memory)
and, if so, returns the one line to print; the command then exits with status 2. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import re
import zipfile
from typing import Optional, Tuple, Type

__all__ = ["USER_ERRORS", "user_message", "ALLOCATION_PATTERNS"]

#: Exception types that a user's input causes (the OSError family covers missing files, folders
#: where files are expected, permission problems, a parent that is a file and HDF5 open failures).
USER_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError, EOFError, MemoryError,
                                                 OverflowError, zipfile.BadZipFile)

#: Messages of ``RuntimeError`` that mean "the request does not fit" rather than a bug.
ALLOCATION_PATTERNS = re.compile(r"can't allocate|out of memory|not enough memory|"
                                 r"invalid number of elements|numel: integer multiplication overflow|"
                                 r"Trying to create tensor with negative dimension", re.IGNORECASE)


def _yaml_errors() -> Tuple[Type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yaml is a dependency
        return ()
    return (yaml.YAMLError,)


def user_message(error: BaseException, extra: Tuple[Type[BaseException], ...] = ()) -> Optional[str]:
    """The one-line message for a user-caused ``error``, or None for a bug.

    ``extra``: more exception types the caller knows to be user-caused (e.g. Lightning's
    ``MisconfigurationException`` for ``torchmf-train``).
    """
    if isinstance(error, _yaml_errors()):
        mark = getattr(error, "problem_mark", None)
        source = getattr(mark, "name", None)
        where = f" in {source!r}" if source and not str(source).startswith("<") else ""
        return _first_line(f"invalid YAML{where}: {_yaml_problem(error)}")
    if isinstance(error, (MemoryError,)) or (isinstance(error, RuntimeError) and ALLOCATION_PATTERNS.search(str(error))):
        return _first_line(f"the request does not fit in memory ({str(error).strip() or type(error).__name__}); "
                           "ask for fewer particles, a smaller grid or fewer recorded times")
    if isinstance(error, OSError):
        return _first_line(_os_message(error))
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else ""
        return _first_line(key if isinstance(key, str) and " " in key else f"unknown key {key!r}")
    if isinstance(error, zipfile.BadZipFile):
        return _first_line(f"not a readable zip/npz file ({error})")
    if isinstance(error, USER_ERRORS + tuple(extra)):
        text = str(error).strip()
        return _first_line(text if text else type(error).__name__)
    return None


def _os_message(error: OSError) -> str:
    reason = error.strerror or str(error).strip() or type(error).__name__
    if error.filename is None:
        return reason
    target = f"{str(error.filename)!r}"
    if error.filename2 is not None:
        target += f" -> {str(error.filename2)!r}"
    # our own messages already start with the argument's name ("path: ...")
    return f"{target}: {reason}"


def _yaml_problem(error) -> str:
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:500]
