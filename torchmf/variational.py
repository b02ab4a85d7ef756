"""Compatibility names: the variational posterior of the averaged dynamics lives in
:mod:`torchmf.averaging.variational` (:class:`VariationalAveragedDrift`, :func:`band_scores`; also
``torchmf.averaging.VariationalAveragedDrift``); this module keeps
``from torchmf.variational import VariationalAveragedDrift`` working."""
from .averaging.variational import OCCUPATION_BINS, VariationalAveragedDrift, band_scores

__all__ = ["VariationalAveragedDrift", "band_scores", "OCCUPATION_BINS"]
