"""Compatibility name: :func:`read_series` lives in :mod:`torchmf.data.series` (also
``torchmf.data.read_series``); this module keeps ``from torchmf.series import read_series`` working."""
from .data.series import SERIES_KEYS, TIME_KEYS, read_series

__all__ = ["read_series", "SERIES_KEYS", "TIME_KEYS"]
