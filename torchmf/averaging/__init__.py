r"""Flow-parameterized averaged dynamics: learn the slow SDE of a fast-slow system from one slow path.

Model (see :mod:`torchmf.systems.fastslow`):
:math:`dX = f_\theta(X, Y)dt + \sigma dW`, :math:`dY = \varepsilon^{-1} g(X, Y)dt + \varepsilon^{-1/2}\tau dB`.
Only a path of ``X`` is observed. Averaging gives :math:`dX = F(X)dt + \sigma dW` with

.. math:: F(x) = E_{y \sim q_\phi(\cdot\mid x)}[f_\theta(x, y)] \approx \tfrac1S \textstyle\sum_s f_\theta(x, y_s),

:math:`q_\phi(y \mid x)` a conditional normalizing flow standing for the fast invariant law
:math:`\rho_x`, sampled with reparameterization. Training minimizes the Euler-Maruyama negative
log-likelihood of the observed transitions plus ``penalty_weight`` times the stationarity residual
:math:`\sum_j E_{x}\big(E_{q_\phi(\cdot|x)}[\mathcal L_x \psi_j]\big)^2`, with
:math:`\mathcal L_x \psi = g(x,\cdot)\cdot\nabla\psi + \tfrac{\tau^2}2 \Delta\psi` (autograd through
:mod:`torch.func`) over a fixed family of test functions :math:`\psi_j`.

Both squared terms are estimated without Monte-Carlo bias: the ``S`` samples are split into two
independent halves and the square :math:`r^2` is replaced by :math:`r^{(1)} r^{(2)}` (a plain
square would reward :math:`q_\phi` for shrinking the spread of :math:`f_\theta(x, Y)`).

Classes: :class:`FlowAveragedDrift` (``density="flow"`` or ``"gaussian"``, the Gaussian
closure), :class:`NeuralDrift` (black-box baseline), :class:`ReducedSDE` and
:func:`simulate_reduced` (torchsde), :func:`fit_fast_law` (``q_phi`` alone, no data, by reverse KL to
the system's known unnormalized fast law -- it sees the weights of separated modes, which the
moment conditions of the penalty barely do; used for the bimodal tilted well). The variational
posterior is :class:`VariationalAveragedDrift` (:mod:`torchmf.averaging.variational`).

Files: ``likelihood.py`` (the observed path's transitions, the Euler-Maruyama likelihood,
:class:`PathStatistics`, the fast samples' base noise: shared by the point estimates and the
posterior), ``fast_slow_system.py`` (which fast-slow system: a registered name or a user class by its
import path), ``flows.py`` (the densities :math:`q_\phi(y|x)` and :math:`q_\psi(\vartheta)`),
``drift.py`` (:class:`TestFunctions`, :func:`generator_applied`, :class:`FlowAveragedDrift`,
:class:`NeuralDrift`), ``fitting.py`` (:func:`fit_fast_law`, :func:`drift_error`), ``reduced.py``
(:class:`ReducedSDE`, :func:`simulate_reduced`, :func:`build_pretrained`), ``variational.py`` (the
posterior, :func:`band_scores`), ``posterior_summaries.py`` (credible bands, posterior draws with the
corrected sigma, credible intervals), ``plots.py`` (figures; not imported here: it loads matplotlib).
``torchmf.variational``, ``torchmf.flows`` and ``torchmf.averaging_plots`` re-export from here.

Shapes: slow states ``x (B, d)``, fast samples ``y (B, S, k)``, drifts ``(B, d)`` (``(T, B, d)``
for ``T`` parameter draws ``theta (T, P)``); an observed path gives ``x, dx (n, d)``, ``dt (n,)``.
"""
from .._class_path import split_class_path
from ..systems.fastslow import FastSlowSystem
from .drift import DENSITIES, FlowAveragedDrift, NeuralDrift, TestFunctions, generator_applied
from .fast_slow_system import fast_system
from .fitting import drift_error, fit_fast_law
from .likelihood import PathStatistics, em_negative_log_likelihood, fast_base_noise, path_transitions
from .reduced import ReducedSDE, build_pretrained, simulate_reduced
from .variational import VariationalAveragedDrift, band_scores

__all__ = ["FlowAveragedDrift", "NeuralDrift", "TestFunctions", "ReducedSDE", "simulate_reduced", "path_transitions",
           "em_negative_log_likelihood", "PathStatistics", "fast_system", "drift_error", "build_pretrained",
           "fit_fast_law", "fast_base_noise", "VariationalAveragedDrift", "band_scores", "generator_applied",
           "split_class_path", "DENSITIES", "FastSlowSystem"]
