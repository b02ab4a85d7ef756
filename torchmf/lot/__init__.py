r"""Linearized optimal transport (LOT) velocities and projective integration of particle systems.

The bulk law of a particle system moves with a velocity field :math:`v_t` that can be read off
optimal transport maps between snapshots, even when each particle moves erratically:

- :func:`lot_velocity`: the average of ``k`` centred differences of transport maps from the
  central snapshot (LOT paper, section 5.2),
  :math:`v(x_i) = \frac1k \sum_{j=1}^k \frac{T^{+j}(x_i) - T^{-j}(x_i)}{2 j h}`.
- :func:`particle_velocity`: the same average without transport (the particle-wise baseline of
  section 6.2): each particle's own centred differences.
- :func:`extrapolate`: recorded snapshots moved beyond the last one with the LOT velocity (no
  simulator needed).
- :func:`lot_embedding` and :func:`pca`: maps :math:`T_\sigma^{\mu}` from a fixed reference cloud,
  flattened, and their principal components (the trajectory picture of Fig. 6.6).
- :class:`ProjectiveIntegrator`: start-up ``S``; ``N_T`` cycles of (``2k+1`` micro snapshots, LOT
  velocity at the central one, Euler step :math:`x \mapsto x + H v(x)`, re-initialization of
  hidden per-particle state, burn-in ``H_R``); final recovery ``R`` (section 5.3). It records every
  stage, counts micro steps against a plain run, and compares with a control run in :math:`W_2`.

Micro-simulators follow a small protocol (:class:`MicroSimulator`): ``dt`` (micro step ``h``),
``state`` (read and assign; may carry hidden per-particle variables), ``step(n)``,
``positions() -> (N, d)`` and ``set_positions((N, d))``. :class:`SystemSimulator` adapts any
registered :mod:`torchmf.systems` system.

Files: ``velocity.py`` (:func:`lot_method`, the window checks, :func:`lot_velocity`,
:func:`particle_velocity`), ``extrapolation.py`` (:func:`extrapolate`), ``embedding.py``
(:func:`lot_embedding`, :func:`pca`), ``simulators.py`` (the micro-simulator protocol and the
hidden-state re-initialization policies), ``integrator.py`` (:class:`AdaptiveStep`,
:class:`ProjectiveRun`, :func:`w2_distance`, :class:`ProjectiveIntegrator`).

Shapes: snapshots ``(2k+1, N, d)``; velocities ``(N, d)``; recorded runs ``(L, N, d)``.
"""
from .embedding import lot_embedding, pca
from .extrapolation import extrapolate
from .integrator import AdaptiveStep, ProjectiveIntegrator, ProjectiveRun, w2_distance
from .simulators import KeepHiddenState, MicroSimulator, SystemReinitialization, SystemSimulator, check_simulator
from .velocity import lot_method, lot_velocity, particle_velocity

__all__ = ["lot_velocity", "particle_velocity", "lot_embedding", "pca", "MicroSimulator", "SystemSimulator",
           "check_simulator", "KeepHiddenState", "SystemReinitialization", "AdaptiveStep", "ProjectiveIntegrator",
           "ProjectiveRun", "lot_method", "w2_distance", "extrapolate"]
