"""Atomic file writing: a temporary file in the target folder, then ``os.replace``.

An interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, List, Union

__all__ = ["atomic_path", "write_json", "write_text", "sweep_stale_temporaries", "read_hdf5_array",
           "check_output_path", "read_plain_arrays", "npz_problem"]

PathLike = Union[str, os.PathLike]
_ORPHAN_SECONDS = 3600.0


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk (``fsync``) and
    renamed to ``path``.

    On an exception the temporary file is removed and the final file is left untouched; an
    ``OSError`` names ``path``, never the temporary. Temporary files of the same target left by
    a killed writer (``.NAME.<pid>.*`` of a process that no longer runs) are removed first.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "a parent of the output is an existing file, not a folder",
                                 str(path)) from None
    except OSError as error:  # e.g. under /proc or a read-only folder: name the output the user gave
        raise type(error)(error.errno or errno.EIO, f"cannot create its folder {str(path.parent)!r} "
                          f"({error.strerror or error})", str(path)) from None
    sweep_stale_temporaries(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp",
                                             dir=path.parent)
    except OSError as error:  # the folder refuses new files: name the user's path, not the temporary's
        raise type(error)(error.errno or errno.EIO, f"cannot write here ({error.strerror or error})",
                          str(path)) from None
    os.close(handle)
    temporary = Path(temporary)
    # mkstemp creates 0600 files; give the final file the usual permissions (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        try:
            yield temporary
            _fsync(temporary)
            os.replace(temporary, path)
            _fsync_directory(path.parent)
        except OSError as error:
            raise _naming_target(error, temporary, path) from None
    finally:
        if temporary.exists():
            temporary.unlink()


def check_output_path(name: str, path: PathLike, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: a parent that is a file, or
    (``folder=False``) a target that is a folder, or (``folder=True``) a target that is a file.
    Raises ``NotADirectoryError``/``IsADirectoryError`` naming ``name`` and the path."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = (errno.ENOTDIR, "expected a folder, but this is a file") if folder else \
            (errno.EISDIR, "expected a file name, but this is a folder")
        raise (NotADirectoryError if folder else IsADirectoryError)(kind[0], f"{name}: {kind[1]}", str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{name}: {str(parent)!r} is a file, not a folder",
                                         str(path))
            _probe_writable(name, parent, path)
            break
    return path


def _probe_writable(name, folder, path):
    """Create and remove a file in ``folder``: permissions alone do not tell (root, read-only mounts, /proc)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".torchmf-probe-"):
            pass
    except OSError as error:
        where = f"cannot write in {str(folder)!r}" if folder == path.parent else \
            f"cannot create its folder {str(path.parent)!r}"
        raise PermissionError(errno.EACCES, f"{name}: {where} ({error.strerror})", str(path)) from None


def sweep_stale_temporaries(path: PathLike) -> List[Path]:
    """Remove ``.NAME.<pid>.*`` temporaries of ``path`` whose writer process is gone; returns them.

    Temporaries of a live process (another writer of the same target) are kept; ones without a
    process id (older torchmf versions) are removed once they are older than ``_ORPHAN_SECONDS``.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        if not candidate.name.startswith(prefix) or not candidate.is_file():
            continue
        owner = candidate.name[len(prefix):].split(".", 1)[0]
        try:
            stale = not _process_alive(int(owner)) if owner.isdigit() else \
                time.time() - candidate.stat().st_mtime > _ORPHAN_SECONDS
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # raced with another sweeper or the writer's own rename
            continue
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a write in progress in this process (another thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk (not possible on every OS)
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _naming_target(error: OSError, temporary: Path, path: Path) -> OSError:
    """The same error, naming the user's ``path`` instead of the hidden temporary file."""
    message = error.strerror or str(error)
    for name in (str(temporary), temporary.name):
        message = message.replace(name, str(path))
    return type(error)(error.errno or 0, message, str(path)) if error.errno else OSError(
        errno.EIO, f"cannot write the file ({message})", str(path))


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json(path: PathLike, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    # numpy and torch scalars/arrays show up in metrics dictionaries.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def read_hdf5_array(group, name: str, path: PathLike):
    """The array stored under ``name`` in an open ``h5py`` group, as numpy.

    Only data held inside the file is read: external links, soft links, virtual datasets and
    datasets with external raw storage are refused (they would read other files), as are
    non-numeric datasets. Raises ``ValueError`` naming ``path``.
    """
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        raise ValueError(f"path: {str(path)!r} lacks dataset {name!r}")
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"path: {str(path)!r}: {name!r} is an HDF5 {type(link).__name__} to another location; "
                         "only data stored in the file itself is read")
    dataset = group[name]
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"path: {str(path)!r}: {name!r} is a {type(dataset).__name__}, expected a dataset")
    if dataset.is_virtual or dataset.external:
        raise ValueError(f"path: {str(path)!r}: {name!r} keeps its data in other files (virtual or external "
                         "storage); only data stored in the file itself is read")
    if dataset.dtype.kind not in "fiub":
        raise ValueError(f"path: {str(path)!r}: {name!r} holds {dataset.dtype} values, expected numbers")
    return dataset[()]


def read_plain_arrays(path: PathLike) -> dict:
    """Every top-level numeric array of a ``.npz`` or ``.h5``/``.hdf5`` file made outside torchmf:
    ``{name: numpy array}`` (``allow_pickle=False``; HDF5 through :func:`read_hdf5_array`, so links
    and external storage are refused). Raises ``ValueError`` naming ``path``."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"path: {str(path)!r} is not a readable npz file ({npz_problem(error)})") from None
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                # links are refused by read_hdf5_array before their target (maybe another file) is opened
                return {name: read_hdf5_array(handle, name, path) for name in handle
                        if not isinstance(handle.get(name, getlink=True), h5py.HardLink)
                        or isinstance(handle[name], h5py.Dataset)}
        except OSError as error:
            raise ValueError(f"path: {str(path)!r} is not a readable HDF5 file ({error})") from None
    raise ValueError(f"path: expected a .npz, .h5 or .hdf5 file, but got {str(path)!r}")


def npz_problem(error: BaseException) -> str:
    """Why numpy could not read an ``.npz`` (for "not a readable npz file (...)"), without numpy's advice
    to load a pickle unsafely: pickled data is refused, never loaded."""
    text = str(error)
    if "pickled" in text or "allow_pickle" in text:
        return "it holds pickled (object) data, which is refused: only numeric arrays are read"
    return f"{type(error).__name__}: {text}"
