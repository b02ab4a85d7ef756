"""Readers of a user's files by what they hold, as used by the command line: one call per file.

- :func:`read_particle_data`: particle data -- a torchmf or plain ``.h5``/``.npz`` (``positions``,
  ``times``) or a long-format ``.csv``/``.tsv``/``.txt`` table of tracks -- as a
  :class:`~torchmf.data.trajectories.Trajectories`;
- :func:`read_observations`: particle data as :class:`~torchmf.data.observations.ParticleObservations`,
  image stacks (``.npz``, ``.h5``, ``.tif``) as :class:`~torchmf.data.observations.GridObservations`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .files import read_plain_arrays
from .images import read_images
from .observations import GridObservations, ParticleObservations
from .trajectories import Trajectories

__all__ = ["TABLE_SUFFIXES", "read_particle_data", "read_observations"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")


def read_particle_data(path, options=None):
    """A :class:`~torchmf.data.Trajectories` from ``path``: a long-format table (``.csv``,
    ``.tsv``, ``.txt``; columns named by ``options.id``, ``.time``, ``.columns``,
    ``.experiment_column``, ``.frame_dt`` as added by :func:`torchmf.runs.add_table_arguments`) or a ``.h5``/``.npz``
    (torchmf's or plain ``positions``/``times``; ``options.frame_dt`` is then refused: the file has its times)."""
    path = Path(path)
    options = options if options is not None else argparse.Namespace()
    if path.suffix.lower() in TABLE_SUFFIXES:
        return Trajectories.from_tracks(path, id=getattr(options, "id", "particle"),
                                        time=getattr(options, "time", "frame"),
                                        columns=getattr(options, "columns", None),
                                        experiment=getattr(options, "experiment_column", None),
                                        dt=getattr(options, "frame_dt", None))
    if getattr(options, "frame_dt", None) is not None:
        raise ValueError(f"--frame-dt: applies to long-format tables (.csv) only; {str(path)!r} stores its times")
    return Trajectories.load(path)


def read_observations(path, extent=None, frame_dt=None, **image_options):
    """Observations from a file: particle data (``positions``/``times`` or a track table) become
    :class:`~torchmf.data.ParticleObservations`, image stacks (``images``; ``.npz``, ``.h5``,
    ``.tif``) :class:`~torchmf.data.GridObservations` (``extent`` = image edges, ``image_options``
    as in its constructor). ``frame_dt``: times ``0, dt, 2 dt, ...`` when the file has none."""
    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES or (path.suffix.lower() in (".npz", ".h5", ".hdf5")
                                                  and _holds(path, "positions")):
        options = argparse.Namespace(frame_dt=frame_dt if path.suffix.lower() in TABLE_SUFFIXES else None)
        return ParticleObservations(read_particle_data(path, options))
    images, stored = read_images(path)
    times = stored.get("times")
    if times is None and frame_dt is not None:
        times = [index * frame_dt for index in range(images.shape[-3] if images.ndim >= 3 else 1)]
    if extent is None and "extent" in stored:
        extent = (stored["extent"][0].tolist(), stored["extent"][1].tolist())
    if extent is None or times is None:
        raise ValueError(f"--observations: {str(path)!r} needs an extent (--extent) and times (--frame-dt) when the "
                         f"file does not hold them")
    return GridObservations(images, extent, times, **image_options)


def _holds(path: Path, name: str) -> bool:
    return name in read_plain_arrays(path)
