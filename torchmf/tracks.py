"""Compatibility name: the long-format table reader lives in :mod:`torchmf.data.tracks` (also
``torchmf.data.tracks_to_arrays``); this module keeps ``from torchmf.tracks import ...`` working."""
from .data.tracks import read_columns, tracks_to_arrays

__all__ = ["tracks_to_arrays", "read_columns"]
