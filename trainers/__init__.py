"""Lightning side of torchmf: LightningModules, DataModules and the ``torchmf-train`` CLI.

Classes are imported lazily (``trainers.AveragedDynamicsModule`` imports Lightning only when
touched), so ``import torchmf`` never imports Lightning.
"""
from __future__ import annotations

import importlib

# public name -> module that defines it; each method adds its own lines
_LAZY = {
    "DriftModule": "trainers.drift",
    "TrajectoryDataModule": "trainers.drift",
    "AveragedDynamicsModule": "trainers.averaged",
    "VariationalAveragedDynamicsModule": "trainers.averaged",
    "SlowPathDataModule": "trainers.slow_path_data",
    "PredictionWriter": "trainers.prediction_writer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
