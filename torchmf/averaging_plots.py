"""Compatibility names: the figures of the averaged dynamics live in :mod:`torchmf.averaging.plots`;
this module keeps ``from torchmf.averaging_plots import drift_band_plot`` (and the other names
below) working."""
from .averaging.plots import drift_band_plot, fast_law_plot, posterior_pairs_plot

__all__ = ["drift_band_plot", "fast_law_plot", "posterior_pairs_plot"]
