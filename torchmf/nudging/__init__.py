r"""Multiscale nudging: assimilate smoothed density observations into a particle model.

With a Gaussian smoothing kernel :math:`K_h` (periodized on a torus) and an observed smoothed
density :math:`\rho^{obs}_t = K_h * \mu^{obs}_t`, the misfit
:math:`F(\mu) = \tfrac12 \|K_h * \mu - \rho^{obs}\|^2_{L^2}` has the Wasserstein-gradient velocity

.. math::
    v(x) = -\lambda\, \nabla\big(\tilde K_h * (K_h * \mu - \rho^{obs})\big)(x)
         = -\lambda\,\big[(\nabla K_{\sqrt2 h} * \mu)(x) - (\nabla K_h * \rho^{obs})(x)\big],

since :math:`\tilde K_h = K_h` for the (even) Gaussian and :math:`K_h * K_h = K_{\sqrt2 h}` (on
:math:`\mathbb{R}^d` and on the torus alike). Every forecast particle then follows
:math:`dZ_i = b(Z_i, \mu^N)\,dt + v(Z_i)\,dt + \sigma\, dW_i`: no particle matching, no covariance.
For reference-particle observations :math:`\nabla K_h * \rho^{obs} = \nabla K_{\sqrt2 h} * \mu^{obs}`.

Observations come from the data layer (:mod:`torchmf.data.observations`, re-exported here):
:class:`ParticleObservations` (reference particle snapshots, smoothed with the same kernel as the
forecast) and :class:`GridObservations` (smoothed densities on a grid: images), held (``"hold"``) or
interpolated (``"linear"``) between observation times; before the first observation time the
nudging velocity is zero.

:class:`NudgedSDE` wraps any base model with ``step(t, x, dt, generator)`` (a
:class:`~torchmf.sde.McKeanVlasovSDE`, a registered system, a PIC solver) and, for torchsde, its
``f``/``g``. Its :meth:`NudgedSDE.step` is a Lie splitting: one step of the base model, then the
nudging flow :math:`\dot x = v(x)` integrated by explicit Euler with ``n`` sub-steps. ``n`` comes
from a stability bound of the linearized nudging flow: around a density :math:`\rho_0` a perturbation
of wavenumber :math:`k` decays at rate :math:`\lambda \rho_0 k^2 |\hat K_h(k)|^2 = \lambda \rho_0 k^2
e^{-k^2h^2}`, at most :math:`L = \lambda P / (e h^2)` with :math:`P` the larger of the forecast's and
the observation's peak smoothed densities; ``n = ceil(dt L / stability)`` (``stability = 1``, half
of explicit Euler's limit 2, so the sub-steps neither overshoot nor blow up, even for
:math:`\lambda = 10^4`). Pass ``substeps=k`` to override.

The explicit cost grows linearly with :math:`\lambda`. Above 100 sub-steps per step the grid
backend (``scheme="auto"``, the default, or ``"implicit"``) switches to linearly implicit
sub-steps: the misfit field is filtered by :math:`1/(1 + \tau\lambda P k^2 e^{-k^2h^2})` on the
grid's spectrum (implicit Euler of the same linearized decay, stable for any :math:`\lambda`), in
at most ``implicit_substeps`` (default 4) sub-steps. On the README's ``ou_linear`` example
(N = 2000, t in [0, 2], h = 0.2) lambda = 1e4 and 1e6 then cost about what lambda = 1e2 costs, with a
final W2 to the reference below lambda = 1e2's (scripts/bench_nudging.py). The implicit step damps
with the peak density, so it tracks less tightly than the (100x dearer) explicit integration of
the same lambda. An explicit run beyond 100 sub-steps per step warns with its estimated cost.

Backends: ``"grid"`` -- cloud-in-cell deposit on a fixed :class:`~torchmf.grid.Grid`, FFT
convolution with :math:`\nabla K_{\sqrt2h}` (free-space zero padding or periodic), observation
fields precomputed once per observation, interpolation back: ``O(N + G log G)`` per sub-step;
``"pairwise"`` -- exact sums over particles (and observation nodes), the slow reference path.

Shapes: forecast state ``(M, N, D)`` (``M`` experiments); the observed coordinates
``observed_dims`` (default all) form a ``d``-dimensional view ``(M, N, d)``; observations carry
``M`` or 1 experiments (then shared).

Sharding (``sharded=True``, grid backend, inside a ``torch.distributed`` process group of
several ranks, see :mod:`torchmf.distributed`): each rank holds its share of the forecast
particles and of the observed particles; the deposited model and observation grids are
all-reduced (``O(G^d)`` per sub-step, independent of ``N``), as are the bounds checks and the
default grid's extent, so every rank takes the same sub-steps and the velocity does not depend
on the number of ranks.

Host synchronisation per step: the adaptive sub-step count needs the peak density on the host
(one read per model step; pass ``substeps=k`` to avoid it), and the bounds check of a free-space
grid reads the particles' extent (one read per sub-step; none on a periodic grid).

Files: ``sde.py`` (:class:`NudgedSDE`: validation, the split step, the torchsde protocol),
``velocity.py`` (:class:`~torchmf.nudging.velocity.TransportVelocity`: the misfit gradient on the
grid or pairwise, and the choice of the computation grid), ``implicit.py`` (the linearly implicit
sub-step), ``field_of_view.py`` (the misfit inside an image window).
"""
from ..data.observations import INTERPOLATIONS, GridObservations, ParticleObservations, density_observations
from .sde import BACKENDS, SCHEMES, NudgedSDE

__all__ = ["ParticleObservations", "GridObservations", "NudgedSDE", "density_observations", "INTERPOLATIONS",
           "BACKENDS", "SCHEMES"]
