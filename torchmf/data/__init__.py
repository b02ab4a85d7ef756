"""The data layer: every reader of particle data, images and series, and every observation operator.

Methods receive data objects from here and never read files themselves.

========================  =========================================================================
``trajectories.py``       :class:`Trajectories`: positions ``(M, L, N, d)``, times ``(L,)``, mask, meta
``trajectory_files.py``   its ``.h5``/``.npz`` format (written atomically, read without running code)
``tracks.py``             long-format tables (``particle``, ``frame``, ``x``, ``y``, ...) to masked arrays
``images.py``             image stacks (``.npz``, ``.h5``, TIFF) as arrays, and their ImageJ/OME calibration
``background.py``         a microscope image's constant floor, found and removed
``camera.py``             a camera's view of cells (floor, blur, shot noise): test and benchmark images
``tables.py``             delimited text tables read as text columns, every error located (file, column, row)
``series.py``             one slow path (``.csv``/``.npz``/``.h5``) as a one-particle Trajectories
``observations.py``       :class:`ParticleObservations`, :class:`GridObservations`,
                          :func:`density_observations`, :func:`initial_particles`
``readers.py``            a user's file by what it holds (:func:`read_particle_data`, :func:`read_observations`)
``files.py``              atomic writes, JSON, plain numeric arrays from ``.npz``/``.h5`` (links refused)
========================  =========================================================================
"""
from .images import IMAGE_KEYS, read_image_metadata, read_images
from .observations import GridObservations, ParticleObservations, density_observations, initial_particles
from .readers import TABLE_SUFFIXES, read_observations, read_particle_data
from .series import SERIES_KEYS, TIME_KEYS, read_series
from .tracks import read_columns, tracks_to_arrays
from .trajectories import Trajectories

__all__ = ["Trajectories", "ParticleObservations", "GridObservations", "density_observations", "initial_particles",
           "read_particle_data", "read_observations", "read_images", "read_image_metadata", "read_series", "tracks_to_arrays",
           "read_columns", "TABLE_SUFFIXES", "IMAGE_KEYS", "SERIES_KEYS", "TIME_KEYS"]
