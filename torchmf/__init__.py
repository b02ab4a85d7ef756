"""torchmf: a PyTorch toolkit for mean-field particle dynamics.

Four methods on one particle core: multiscale nudging (:mod:`torchmf.nudging`), LOT projective
integration (:mod:`torchmf.lot`), flow-parameterized averaged dynamics
(:mod:`torchmf.averaging`) and WSINDy for particle systems (:mod:`torchmf.wsindy`).
The core: :class:`Trajectories`, :mod:`torchmf.kernels`, :mod:`torchmf.interaction`,
:mod:`torchmf.sde`, :mod:`torchmf.systems`, :mod:`torchmf.metrics`.
"""
from .data import Trajectories

__version__ = "0.1.0"
__all__ = ["Trajectories", "__version__"]
