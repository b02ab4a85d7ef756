"""Compatibility name: :class:`Trajectories` lives in :mod:`torchmf.data.trajectories` (also
``torchmf.Trajectories`` and ``torchmf.data.Trajectories``); this module keeps
``from torchmf.particles import Trajectories`` working."""
from .data.trajectories import Trajectories

__all__ = ["Trajectories"]
