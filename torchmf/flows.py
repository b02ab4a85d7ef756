"""Compatibility names: the density models of the averaging method live in
:mod:`torchmf.averaging.flows`; this module keeps ``from torchmf.flows import conditional_spline_flow``
(and the other names below) working."""
from .averaging.flows import (ConditionalAffine, ConditionalFlow, ConditionalGaussian, conditional_spline_flow,
                              posterior_flow)

__all__ = ["ConditionalAffine", "ConditionalFlow", "ConditionalGaussian", "conditional_spline_flow", "posterior_flow"]
