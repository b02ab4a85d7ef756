r"""Optimal transport maps between point clouds.

:func:`transport_map` returns :math:`T(x_i)` for every source particle, where :math:`T` pushes the
measure :math:`\sum_i a_i \delta_{x_i}` to :math:`\sum_j b_j \delta_{y_j}` (cost :math:`|x - y|^2`):
uniform weights by default, or ``source_weights`` / ``target_weights``, and ``x`` and ``y`` may
hold different numbers of particles. With weights or unequal sizes the plan is no longer a
permutation and :math:`T(x_i) = \sum_j \pi_{ij} y_j / a_i` is its barycentric projection
(``exact_weighted.py``: the monotone coupling in 1-D, POT's ``ot.emd(a, b, cost)`` beyond;
the torch Sinkhorn loop and geomloss take the log-weights). The backend is
chosen by the single ``method`` argument:

========================  ====================================================================
``"sort"``                exact in 1-D (monotone rearrangement), any N
``"exact"``               optimal assignment: a sparse candidate graph solved by OR-Tools (the
                          optional extra ``.[exact]``) and certified optimal on all N^2 pairs (N up
                          to 100,000); POT's network simplex ``ot.emd`` without OR-Tools and for
                          weighted or unequal clouds (N up to 10,000); clouds with many repeated
                          points: the weighted problem between their distinct sites, any N
                          (``atoms.py``; also under ``"auto"``)
``"sinkhorn-geomloss"``   geomloss tensorized Sinkhorn potentials, barycentric projection
``"sinkhorn-keops"``      geomloss with the KeOps ``"multiscale"`` (d <= 3) or ``"online"``
                          backend; only when ``pykeops`` can be imported (imported lazily)
``"sinkhorn-online"``     torch log-domain Sinkhorn that never forms the N x M cost matrix: the
                          log-sum-exp runs over row tiles sized from the free memory (see
                          :func:`tile_rows`); CPU and CUDA; supports warm starts. In d <= 3 a
                          cold start anneals the coarse scales on grid clusters first.
                          ``"sinkhorn-dense"`` is an accepted alias
``"sinkhorn-multiscale"`` torch coarse-to-fine Sinkhorn: grid clusters solved densely, then a
                          sparse (truncated) kernel around the predicted targets and on the
                          clusters' plan support, checked against the dense kernel up to
                          N = 10,000; d <= 3
``"sinkhorn"``            the fastest measured backend for the size, dimension and device (see
                          :func:`resolve_method`); never pykeops
``"auto"``                ``sort`` in 1-D, ``exact`` for N <= 30,000 (3,000 weighted or unequal),
                          ``sinkhorn`` otherwise
========================  ====================================================================

The torch backends (online, multiscale) share one loop, :func:`sinkhorn_loop`: epsilon annealing,
over-relaxed alternating updates, and a stopping rule on the sup-norm change of the dual potential
(the largest relative column-marginal error of the plan), run to ``tolerance`` at the final
epsilon. A solve that stops at ``max_iterations`` above its tolerance warns
(:class:`UnconvergedTransportWarning`) or raises (``on_unconverged="raise"``); what it achieved is in
``TransportSolver.last_report``.

Sinkhorn maps are barycentric projections of the entropic plan,
:math:`T_\varepsilon(x_i) = \sum_j \pi_{ij} y_j / a_i`, with :math:`\varepsilon = \text{blur}^2`
for the cost :math:`|x-y|^2/2` (geomloss' convention). The entropic plan blurs: :math:`T_\varepsilon`
is pulled towards local means. With ``debias=True`` the self-transport of ``x`` is subtracted,
:math:`T(x) = x + T^{x\to y}_\varepsilon(x) - T^{x\to x}_\varepsilon(x)`; this is the displacement
:math:`-\nabla_x S_\varepsilon / a` of the debiased Sinkhorn divergence and removes the first-order
blur bias. (In a difference of two maps from the same source, such as the centred differences of
:mod:`torchmf.lot`, the correction cancels exactly.)

:class:`TransportSolver` keeps the dual potentials of its last solve and starts the next one from
them (warm start): consecutive snapshots of a particle system carry the same particle labels, so the
potentials of particle ``j`` at one snapshot are a good guess at the next, and the annealing can be
skipped. A warm start runs until the marginal error of its plan is 0.3 x ``tolerance`` (at the
cold tolerance its leftover error leaned towards the previous target), and is redone cold when
that costs more than the last cold solve.

:func:`sinkhorn_potentials` is geomloss' own (unconverged, one update per level) scheme on the
tiled kernel, equal to geomloss' tensorized potentials; :func:`barycentric_map` turns potentials
into the map, tile by tile. :mod:`torchmf.transport.cases` holds the validation families.

Every backend translates both clouds by a common centre (the exact ones also scale them) before
any cost is formed: ``|x|^2 + |y|^2 - 2 x.y`` loses its digits at large coordinates. The default
blur is 5% of the larger of the two clouds' own spreads (:func:`default_blur`), not the union's.

Files: ``solver.py`` (this public API), ``routing.py`` (which backend), ``sinkhorn.py`` (the one
loop), ``kernels.py`` (dense tiled and sparse kernels), ``online.py``, ``multiscale.py``,
``exact.py`` (sort, dispatch, POT), ``sparse_assignment.py`` (certified sparse),
``reduced_search.py`` (smallest reduced costs by block bounds, no N x M matrix), ``exact_weighted.py``
(weighted and unequal sizes), ``atoms.py`` (repeated points as weighted sites; centring and scaling),
``divergence.py`` (W2 from the debiased Sinkhorn divergence, the default blur), ``weights.py``
(checking and normalising weights), ``geomloss_backend.py``, ``potentials.py``, ``cases.py``.

Shapes: ``x`` ``(..., N, d)``, ``y`` ``(..., M, d)`` with equal batch dimensions, weights ``(N,)``
/ ``(..., N)`` and ``(M,)`` / ``(..., M)``; the map has ``x``'s shape, device and dtype.
"""
from .cases import TRANSPORT_CASES, affine_gaussian_case, transport_case
from .potentials import SinkhornPotentials, barycentric_map, sinkhorn_potentials
from .routing import METHODS, free_memory, keops_available, resolve_method, tile_rows
from .sinkhorn import SinkhornReport, SinkhornSettings, sinkhorn_loop
from .solver import (TransportNotConverged, TransportSolver, UnconvergedTransportWarning, default_blur,
                     transport_map)

__all__ = ["transport_map", "TransportSolver", "METHODS", "default_blur", "sinkhorn_potentials", "barycentric_map",
           "SinkhornPotentials", "SinkhornReport", "SinkhornSettings", "sinkhorn_loop", "tile_rows", "free_memory",
           "resolve_method", "keops_available", "affine_gaussian_case", "transport_case", "TRANSPORT_CASES",
           "UnconvergedTransportWarning", "TransportNotConverged"]
