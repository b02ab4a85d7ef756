r"""Linearized optimal transport (LOT) velocities and projective integration of particle systems.

The bulk law of a particle system moves with a velocity field :math:`v_t` that can be read off
optimal transport maps between snapshots, even when each particle moves erratically:

- :func:`lot_velocity`: the velocity of the bulk law at the central snapshot of a window, by default
  a least-squares slope of the transport displacements over the lags, smoothed in space with a
  bandwidth chosen from the data (:mod:`~torchmf.lot.estimate`; :func:`lot_velocity_estimate`
  adds its standard error); ``estimator="centred-average"`` is the LOT paper's section 5.2 average
  of ``k`` centred differences,
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
:func:`lot_velocity_estimate`, :func:`particle_velocity`), ``estimate.py`` (the regression
estimator and :class:`VelocityEstimate`), ``local_linear.py`` (the spatial smoother and its
bandwidth), ``extrapolation.py`` (:func:`extrapolate`), ``embedding.py``
(:func:`lot_embedding`, :func:`pca`), ``simulators.py`` (the micro-simulator protocol and the
hidden-state re-initialization policies), ``window.py`` (one cycle's window, grown while its
velocity is too noisy for the step; :func:`sampling_floor`), ``one_step.py``
(:func:`one_step_test`: a large step scored from a control cloud against the oracle Euler step and
standing still), ``integrator.py`` (:class:`AdaptiveStep`,
:class:`ProjectiveRun`, :func:`w2_distance`, :class:`ProjectiveIntegrator`).

Shapes: snapshots ``(2k+1, N, d)``; velocities ``(N, d)``; recorded runs ``(L, N, d)``.
"""
from .embedding import lot_embedding, pca
from .extrapolation import extrapolate
from .integrator import AdaptiveStep, ProjectiveIntegrator, ProjectiveRun, w2_distance
from .window import sampling_floor
from .simulators import KeepHiddenState, MicroSimulator, SystemReinitialization, SystemSimulator, check_simulator
from .estimate import VelocityEstimate, estimate_velocity
from .local_linear import choose_bandwidth, local_linear
from .one_step import one_step_test
from .velocity import ESTIMATORS, lot_method, lot_velocity, lot_velocity_estimate, particle_velocity

__all__ = ["lot_velocity", "lot_velocity_estimate", "VelocityEstimate", "estimate_velocity", "ESTIMATORS",
           "local_linear", "choose_bandwidth", "one_step_test", "sampling_floor", "particle_velocity",
           "lot_embedding", "pca", "MicroSimulator", "SystemSimulator",
           "check_simulator", "KeepHiddenState", "SystemReinitialization", "AdaptiveStep", "ProjectiveIntegrator",
           "ProjectiveRun", "lot_method", "w2_distance", "extrapolate"]
