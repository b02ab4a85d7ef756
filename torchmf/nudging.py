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

Observation operators:

- :class:`ParticleObservations` -- reference particle snapshots ``(L, N, d)`` or ``(M, L, N, d)``
  at observation times ``(L,)``; they are smoothed with the same kernel as the forecast.
- :class:`GridObservations` -- smoothed densities ``(L, G_1..G_d)`` or ``(M, L, G_1..G_d)`` given
  on the nodes of a grid with its spatial extent (images at any resolution).

Between observation times the rule is ``"hold"`` (the latest observation at or before ``t``) or
``"linear"`` (interpolation between the two neighbouring observations; the last one is held
after the final time). Before the first observation time there is no information and the
nudging velocity is zero. Optional observation noise (a fixed, seeded realization drawn at
construction): Gaussian noise of standard deviation ``noise`` added to the snapshot positions, or
to the density values (absolute units of density).

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
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import distributed
from ._validation import check_choice, check_int, check_nonnegative, check_points, check_positive, check_tensor
from .grid import Grid, GridConvolution
from .interaction import InteractionForce
from .kernels import GaussianKernel, PeriodicKernel, RadialKernel
from .metrics import smoothed_density
from .particles import Trajectories

__all__ = ["ParticleObservations", "GridObservations", "NudgedSDE", "density_observations", "INTERPOLATIONS",
           "BACKENDS", "SCHEMES"]

INTERPOLATIONS = ("hold", "linear")
BACKENDS = ("grid", "pairwise")
SCHEMES = ("auto", "explicit", "implicit")
#: explicit sub-steps per model step above which scheme="auto" switches to the implicit scheme (grid
#: backend) and an explicit run announces its cost before it goes on (lambda ~ 1e3 in the README example)
_EXPLICIT_LIMIT = 100
_TIME_TOLERANCE = 1e-9
_PEAK_QUERIES = 2048  # particles at which the pairwise backend samples the forecast's peak density


# ---------------------------------------------------------------------------------------------------
# observation operators
# ---------------------------------------------------------------------------------------------------
class _Observations:
    """Shared time handling: ``times (L,)`` and the rule between them."""

    kind = "abstract"

    def _with_noise(self, values: torch.Tensor, noise, seed) -> torch.Tensor:
        """Store the observation-noise level and return ``values`` plus seeded Gaussian noise of that size."""
        self.noise = check_nonnegative("noise", noise)
        if self.noise == 0:
            return values
        generator = torch.Generator(device=values.device).manual_seed(check_int("seed", seed, 0))
        return values + self.noise * torch.randn(values.shape, generator=generator, device=values.device,
                                                 dtype=values.dtype)

    def _set_times(self, times, count: int, interpolation: str):
        times = check_tensor("times", torch.as_tensor(times, dtype=torch.float64).detach().cpu(), ndim=1)
        if times.numel() != count:
            raise ValueError(f"times: expected {count} observation times to match the observations, but got {times.numel()}")
        if count > 1 and not bool((times[1:] > times[:-1]).all()):
            raise ValueError("times: expected strictly increasing observation times")
        self.times = times
        self.interpolation = check_choice("interpolation", interpolation, INTERPOLATIONS)

    @property
    def n_times(self) -> int:
        return self.times.numel()

    def rule(self, t: float) -> List[Tuple[int, float]]:
        """Observation indices and weights used at time ``t`` (empty before the first observation)."""
        t = float(t)
        times = self.times
        if t < float(times[0]) - _TIME_TOLERANCE:
            return []
        index = int(torch.searchsorted(times, torch.tensor(t + _TIME_TOLERANCE, dtype=torch.float64), right=True)) - 1
        index = max(0, min(index, self.n_times - 1))
        if self.interpolation == "hold" or index == self.n_times - 1:
            return [(index, 1.0)]
        start, end = float(times[index]), float(times[index + 1])
        fraction = min(1.0, max(0.0, (t - start) / (end - start)))
        if fraction <= _TIME_TOLERANCE:
            return [(index, 1.0)]
        return [(index, 1.0 - fraction), (index + 1, fraction)]

    def check_run(self, start: float, end: float) -> None:
        """Raise if an observation time lies outside the run ``[start, end]``."""
        low, high = float(self.times[0]), float(self.times[-1])
        if low < start - 1e-6 or high > end + 1e-6:
            raise ValueError(f"observations: observation times span [{low:g}, {high:g}], outside the run "
                             f"[{start:g}, {end:g}]; pass observations inside the simulated interval")


class ParticleObservations(_Observations):
    """Reference particle snapshots at observation times.

    Arguments:
        snapshots: ``(L, N, d)``, ``(M, L, N, d)`` or a :class:`~torchmf.particles.Trajectories`; a
            Trajectories with a ``mask`` (lost particles, varying counts per frame) observes at each
            time the empirical measure of its observed particles (weights ``1/n_observed``).
        times: observation times ``(L,)`` (default: the Trajectories' times).
        interpolation: ``"hold"`` or ``"linear"`` between observation times.
        noise: standard deviation of Gaussian noise added once to the positions (default 0).
        seed: seed of that noise.
    """

    kind = "particles"

    def __init__(self, snapshots, times=None, interpolation: str = "hold", noise: float = 0.0, seed: int = 0):
        self.weights = None  # (M, L, N) for masked data, else uniform
        if isinstance(snapshots, Trajectories):
            times = snapshots.times if times is None else times
            if snapshots.mask is not None:
                self.weights = snapshots.weights()  # missing entries: weight 0
            snapshots = snapshots.filled_positions()
        snapshots = check_tensor("snapshots", snapshots)
        if snapshots.ndim == 3:
            snapshots = snapshots.unsqueeze(0)
        if snapshots.ndim != 4 or min(snapshots.shape) == 0:
            raise ValueError(f"snapshots: expected shape (L, N, d) or (M, L, N, d), but got {tuple(snapshots.shape)}")
        if times is None:
            raise ValueError("times: expected observation times (L,) for tensor snapshots, but got None")
        self._set_times(times, snapshots.shape[1], interpolation)
        self.snapshots = self._with_noise(snapshots, noise, seed)

    @property
    def dim(self) -> int:
        return self.snapshots.shape[-1]

    @property
    def n_experiments(self) -> int:
        return self.snapshots.shape[0]

    def sources(self, index: int):
        """Observed measure at ``index``: points ``(M, S, d)`` and weights ``(M, S)`` (uniform)."""
        points = self.snapshots[:, index]
        if self.weights is not None:
            return points, self.weights[:, index].to(points)
        return points, points.new_full(points.shape[:-1], 1.0 / points.shape[-2])

    def bounds(self):
        flat = self.snapshots.reshape(-1, self.dim)
        return flat.min(0).values.tolist(), flat.max(0).values.tolist()


class GridObservations(_Observations):
    """Smoothed densities given on a grid (images), with the grid's spatial extent.

    Arguments:
        densities: tensor or numpy array ``(L, *image)`` or ``(M, L, *image)``: the values of
            :math:`K_h * \\mu^{obs}` at the pixels (a density: it integrates to about 1, see ``normalize``).
        extent: the window the images cover, either a :class:`~torchmf.grid.Grid` (its nodes are where
            the values sit, in the grid's axis order) or ``(lower, upper)``: the outer *edges* of the
            image in coordinate order ``(x, y, ...)``, numbers or ``d``-sequences. Pixel ``j`` along an
            axis with ``G`` pixels covers ``[lower + j h, lower + (j + 1) h]``, ``h = (upper - lower) / G``,
            and its value sits at the pixel centre ``lower + (j + 1/2) h`` (matplotlib's
            ``imshow(extent=...)`` convention).
        times: observation times ``(L,)``.
        periodic: torus (only with ``(lower, upper)``).
        interpolation: ``"hold"`` or ``"linear"``.
        noise: standard deviation of Gaussian noise added once to the values (absolute, density units).
        seed: seed of that noise.
        indexing: ``"xy"``: the image axes are ``(rows = y, columns = x)`` as numpy, matplotlib and
            scikit-image store images (for 3-D stacks ``(y, x, z)``, numpy's ``meshgrid`` convention);
            ``"ij"``: axis ``k`` of the array is coordinate ``k``. Default: ``"xy"`` with a
            ``(lower, upper)`` extent (an image), ``"ij"`` with a :class:`~torchmf.grid.Grid` (torchmf's
            own density grids, e.g. :func:`density_observations`). Irrelevant in 1-D.
        origin: ``"lower"`` (row 0 at the smallest y, ``imshow(origin="lower")``) or ``"upper"`` (row 0 at
            the largest y, how an image file is displayed); ``"xy"`` only.
        normalize: ``False`` (values used as given; a warning when an image's mass
            :math:`\\sum \\rho\\, h^d` is more than 10% away from 1), ``True`` (each image scaled to mass 1)
            or a number in (0, 1] (each image scaled to that mass: the fraction of the population inside
            the field of view).
        field_of_view: ``False`` (the images cover every particle: a forecast particle outside is an
            error), ``True`` (the image window is the observed region: the misfit is measured only
            inside it, particles outside feel no nudging and are not an error) or a boolean mask of the
            image shape (same axis order as ``densities``) marking the observed pixels.
    """

    kind = "density"

    def __init__(self, densities, extent, times, periodic: bool = False, interpolation: str = "hold",
                 noise: float = 0.0, seed: int = 0, indexing: Optional[str] = None, origin: str = "lower",
                 normalize=False, field_of_view=False):
        if isinstance(densities, np.ndarray):
            densities = torch.from_numpy(np.ascontiguousarray(densities))
        densities = check_tensor("densities", densities)
        if isinstance(extent, Grid):
            grid = extent
            dim = grid.dim
        else:
            if not isinstance(extent, (tuple, list)) or len(extent) != 2:
                raise TypeError(f"extent: expected a Grid or a (lower, upper) pair of edges, but got {extent!r}")
            lower, upper = extent
            dim = max(len(lower) if isinstance(lower, (list, tuple)) else 1,
                      len(upper) if isinstance(upper, (list, tuple)) else 1)
        if densities.ndim not in (dim + 1, dim + 2):
            raise ValueError(f"densities: expected (L, G_1..G_{dim}) or (M, L, G_1..G_{dim}) for a {dim}-D extent, "
                             f"but got shape {tuple(densities.shape)}")
        indexing = check_choice("indexing", indexing if indexing is not None else
                                ("ij" if isinstance(extent, Grid) else "xy"), ("xy", "ij"))
        origin = check_choice("origin", origin, ("lower", "upper"))
        if origin == "upper" and indexing != "xy":
            raise ValueError("origin: 'upper' (row 0 at the largest y) applies to indexing='xy' images only")
        self.indexing, self.origin = indexing, origin
        densities = self._to_coordinate_order(densities, dim)
        if not isinstance(extent, Grid):
            grid = _pixel_grid(lower, upper, list(densities.shape[-dim:]), periodic, dim)
        shape = tuple(densities.shape[-grid.dim:])
        if shape != grid.shape:
            raise ValueError(f"densities: expected shape (L, {', '.join(map(str, grid.shape))}) or (M, L, ...) "
                             f"to match the extent's grid, but got {tuple(densities.shape)}")
        if densities.ndim == grid.dim + 1:
            densities = densities.unsqueeze(0)
        self.grid = grid
        self._set_times(times, densities.shape[1], interpolation)
        self.window = self._window(field_of_view, dim, densities.device)
        densities = self._normalized(densities, normalize)
        self.densities = self._with_noise(densities, noise, seed)

    @classmethod
    def from_file(cls, path, extent=None, times=None, key: Optional[str] = None, **options) -> "GridObservations":
        """Images from a ``.npz``/``.h5`` (arrays ``images`` or ``densities``, optionally ``times`` and
        ``extent`` = ``(lower, upper)`` edges) or a TIFF stack (``tifffile``, the ``images`` extra);
        ``extent``/``times`` given here win over the file's. Other options as in the constructor."""
        from .images import read_images

        images, stored = read_images(path, key=key)
        if extent is None and "extent" in stored:
            extent = (stored["extent"][0].tolist(), stored["extent"][1].tolist())  # (2, d): lower and upper edges
        times = times if times is not None else stored.get("times")
        if extent is None:
            raise ValueError(f"extent: {str(path)!r} holds no 'extent' array; pass extent=(lower, upper) (image edges)")
        if times is None:
            raise ValueError(f"times: {str(path)!r} holds no 'times' array; pass the observation times (L,)")
        return cls(images, extent, times, **options)

    def _to_coordinate_order(self, densities: torch.Tensor, dim: int) -> torch.Tensor:
        """``xy`` images ``(..., rows = y, columns = x, ...)`` to coordinate order ``(..., x, y, ...)``."""
        if self.indexing == "ij" or dim < 2:
            return densities
        row_axis = densities.ndim - dim  # y
        if self.origin == "upper":
            densities = densities.flip(row_axis)
        return densities.transpose(row_axis, row_axis + 1).contiguous()

    def _window(self, field_of_view, dim: int, device) -> Optional[torch.Tensor]:
        """``None`` (no field of view) or the observed pixels ``(G_1..G_d)`` bool in coordinate order."""
        if field_of_view is False or field_of_view is None:
            return None
        if field_of_view is True:
            return torch.ones(self.grid.shape, dtype=torch.bool, device=device)
        mask = field_of_view
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"field_of_view: expected False, True or a boolean image mask, but got "
                            f"{type(field_of_view).__name__}")
        mask = self._to_coordinate_order(mask.to(device) != 0, dim)
        if tuple(mask.shape) != self.grid.shape:
            raise ValueError(f"field_of_view: expected a mask of the image shape, but got {tuple(field_of_view.shape)}")
        if not bool(mask.any()):
            raise ValueError("field_of_view: the mask marks no observed pixel")
        return mask

    def masses(self) -> torch.Tensor:
        """Mass :math:`\\sum_j \\rho_j h^d` of every image: ``(M, L)``."""
        return self.densities.flatten(2).sum(-1) * self.grid.cell_volume

    def _normalized(self, densities: torch.Tensor, normalize) -> torch.Tensor:
        masses = densities.flatten(2).sum(-1) * self.grid.cell_volume
        if normalize is False or normalize is None:
            far = (masses - 1).abs() > 0.1
            if bool(far.any()):
                warnings.warn(f"densities: {int(far.sum())} of {masses.numel()} images have a mass "
                              f"(sum of values x pixel area {self.grid.cell_volume:.3g}) far from 1 "
                              f"(range {float(masses.min()):.4g}..{float(masses.max()):.4g}); the nudging compares "
                              f"them with a probability density: pass normalize=True (or the fraction of the "
                              f"population in the field of view)", UserWarning, stacklevel=3)
            return densities
        target = 1.0 if normalize is True else check_positive("normalize", normalize)
        if target > 1:
            raise ValueError(f"normalize: expected True, False or a mass fraction in (0, 1], but got {normalize!r}")
        if not bool((masses > 0).all()):
            raise ValueError("normalize: an image has zero or negative total mass; it cannot be normalized")
        return densities * (target / masses).reshape(*masses.shape, *([1] * self.grid.dim))

    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def n_experiments(self) -> int:
        return self.densities.shape[0]

    def sources(self, index: int):
        """The density as a weighted cloud of nodes: points ``(M, G, d)``, weights ``rho dV`` ``(M, G)``."""
        values = self.densities[:, index]
        nodes = self.grid.nodes(device=values.device, dtype=values.dtype).reshape(-1, self.dim)
        nodes = nodes.expand(values.shape[0], -1, -1)
        return nodes, values.reshape(values.shape[0], -1) * self.grid.cell_volume

    def bounds(self):
        return list(self.grid.lower), list(self.grid.upper)


def _pixel_grid(lower, upper, shape, periodic: bool, dim: int) -> Grid:
    """The grid of pixel centres of an image whose outer edges are ``lower`` and ``upper``."""
    lower = [float(v) for v in (lower if isinstance(lower, (list, tuple)) else [lower] * dim)]
    upper = [float(v) for v in (upper if isinstance(upper, (list, tuple)) else [upper] * dim)]
    if len(lower) != dim or len(upper) != dim:
        raise ValueError(f"extent: expected lower and upper edges of {dim} coordinates, but got {lower}, {upper}")
    if any(not (b > a) for a, b in zip(lower, upper)):
        raise ValueError(f"extent: expected upper > lower edges in every coordinate, but got {lower}, {upper}")
    if any(g < 2 for g in shape):
        raise ValueError(f"densities: expected at least 2 pixels per axis, but got image shape {tuple(shape)}")
    half = [(b - a) / (2 * g) for a, b, g in zip(lower, upper, shape)]
    if periodic:  # torus [lower, upper) with nodes at the pixel centres
        return Grid([a + h for a, h in zip(lower, half)], [b + h for b, h in zip(upper, half)], shape, periodic=True)
    return Grid([a + h for a, h in zip(lower, half)], [b - h for b, h in zip(upper, half)], shape)


def density_observations(trajectories: Trajectories, grid: Grid, bandwidth: float, every: int = 1,
                         interpolation: str = "hold", noise: float = 0.0, seed: int = 0,
                         dims: Optional[Sequence[int]] = None) -> GridObservations:
    """Images of a reference run: :math:`K_h * \\mu_t` on ``grid`` at every ``every``-th recorded time.

    Arguments:
        trajectories: reference ``(M, L, N, D)``; with a ``mask`` each image is that of the observed particles.
        grid: the image grid (extent and resolution).
        bandwidth: :math:`h`.
        every: keep recorded times ``0, every, 2 every, ...``.
        dims: coordinates observed (default all ``D``).

    Returns:
        :class:`GridObservations` with densities ``(M, L', G_1..G_d)``.
    """
    if not isinstance(trajectories, Trajectories):
        raise TypeError(f"trajectories: expected a Trajectories, but got {type(trajectories).__name__}")
    every = check_int("every", every, minimum=1)
    positions = trajectories.filled_positions()[:, ::every]  # lost particles (mask) weigh 0
    weights = None if trajectories.mask is None else trajectories.weights()[:, ::every]
    if dims is not None:
        positions = positions[..., list(dims)]
    densities = torch.stack([smoothed_density(positions[:, i], grid, bandwidth, None if weights is None else weights[:, i])
                             for i in range(positions.shape[1])], 1)
    return GridObservations(densities, grid, trajectories.times[::every], interpolation=interpolation, noise=noise,
                            seed=seed)


# ---------------------------------------------------------------------------------------------------
# the nudged model
# ---------------------------------------------------------------------------------------------------
class _ValueAndGradient:
    """Kernel callable for :class:`GridConvolution`: offsets ``(..., d) -> (..., 1 + d)`` (value, gradient)."""

    def __init__(self, kernel: RadialKernel):
        self.kernel = kernel

    def __call__(self, offsets):
        return torch.cat([self.kernel.value(offsets).unsqueeze(-1), self.kernel._gradient_unchecked(offsets)], -1)


class _FieldOfView:
    r"""Misfit measured only inside the observed window :math:`W` (a field of view).

    :math:`F(\mu) = \tfrac12 \sum_{x_n \in W} (K_h * \mu - \rho^{obs})(x_n)^2\, h^d`, whose
    Wasserstein-gradient velocity is :math:`v = -\lambda\, \nabla K_h * (1_W (K_h * \mu - \rho^{obs}) h^d)`
    (with :math:`W` everything this is the usual velocity, as :math:`K_h * K_h = K_{\sqrt2 h}`).
    The computation grid is the image grid widened by the kernel's reach (same spacing, nodes on the
    pixel centres); particles beyond it are too far to touch :math:`W` (Gaussian tail below
    :math:`e^{-18}`): they carry no mass here and feel no nudging -- not an error.
    """

    def __init__(self, grid: Grid, observations: "GridObservations", smoothing: RadialKernel):
        self.grid = grid
        self.observations = observations
        pad = [round((a - b) / h) for a, b, h in zip(observations.grid.lower, grid.lower, grid.spacing)]
        self.slices = (Ellipsis,) + tuple(slice(p, p + g) for p, g in zip(pad, observations.grid.shape))
        self.value = GridConvolution(grid, smoothing.value)
        self.gradient = GridConvolution(grid, smoothing._gradient_unchecked)
        self._targets: Dict[tuple, torch.Tensor] = {}

    @staticmethod
    def widened(image: Grid, bandwidth: float, margin: Optional[float]) -> Grid:
        """``image`` grid extended by ``max(6 h, margin)`` on every side, on the same node lattice."""
        reach = 6 * bandwidth if margin is None else max(6 * bandwidth, check_nonnegative("margin", margin))
        extra = [max(1, math.ceil(reach / h)) for h in image.spacing]
        return Grid([a - k * h for a, k, h in zip(image.lower, extra, image.spacing)],
                    [b + k * h for b, k, h in zip(image.upper, extra, image.spacing)],
                    [g + 2 * k for g, k in zip(image.shape, extra)])

    def target(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Observed density inside the window, zero elsewhere, on the widened grid: ``(M_obs, *G)``."""
        key = (index, like.device, like.dtype)
        if key not in self._targets:
            for old in [k for k in self._targets if k[0] < index - 1]:
                del self._targets[old]
            observed = self.observations.densities[:, index].to(like)
            full = like.new_zeros(observed.shape[0], *self.grid.shape)
            full[self.slices] = observed * self.observations.window.to(like.device)
            self._targets[key] = full
        return self._targets[key]

    def velocity(self, rule, points: torch.Tensor, want_peak: bool):
        """``(v / lambda (M, N, d), model peak or None, observation peak)`` for observed coordinates ``(M, N, d)``."""
        lower, upper = points.new_tensor(self.grid.lower), points.new_tensor(self.grid.upper)
        inside = ((points >= lower) & (points <= upper)).all(-1)  # NaN counts as outside
        safe = torch.where(inside.unsqueeze(-1), points, lower)  # placeholders of weight 0 (index safety only)
        weights = inside.to(points.dtype) / points.shape[-2]
        smoothed = self.value(self.grid.deposit(safe, weights, check=False))[..., 0]  # K_h * mu at the nodes
        window = points.new_zeros(self.grid.shape)
        window[self.slices] = self.observations.window.to(points)
        residual = window * smoothed
        observation_peak = 0.0
        for index, weight in rule:
            target = self.target(index, points)
            residual = residual - weight * target
            observation_peak = max(observation_peak, float(target.max()))
        field = self.gradient(residual * self.grid.cell_volume)
        velocity = self.grid.interpolate(field, safe, check=False) * inside.unsqueeze(-1)
        return velocity, (float(smoothed.max()) if want_peak else None), observation_peak


class NudgedSDE(nn.Module):
    """A base particle model corrected by the Wasserstein-gradient nudging velocity.

    Arguments:
        base_sde: the (biased) model: any object with ``step(t, x, dt, generator)`` acting on
            ``(M, N, D)`` (and, for ``torchsde.sdeint``, ``f(t, y)``/``g(t, y)`` on ``(M*N, D)``).
        observations: :class:`ParticleObservations` or :class:`GridObservations`.
        bandwidth: :math:`h > 0` of the Gaussian smoothing kernel.
        strength: :math:`\\lambda \\ge 0`.
        backend: ``"grid"`` (fast) or ``"pairwise"`` (exact).
        grid: computation grid of the grid backend (default: the observation grid for
            :class:`GridObservations`, else a free-space grid covering the snapshots widened by
            ``margin``); a periodic grid makes the kernel periodic (for both backends).
        grid_shape: nodes per dimension of the default grid (default 512 in 1-D, 256 in 2-D, 64 in 3-D).
        margin: widening of the default grid on each side (default ``max(6 h, 25%`` of the extent)).
        substeps: nudging sub-steps per model step (default None: automatic from the stability bound).
        stability: the bound's target :math:`dt_{sub} L` (default 1).
        scheme: how the nudging flow is integrated: ``"explicit"`` (Euler sub-steps from the
            stability bound, cost linear in :math:`\lambda`), ``"implicit"`` (grid backend: linearly
            implicit sub-steps, stable for any :math:`\lambda`, at most ``implicit_substeps`` per
            step) or ``"auto"`` (default: explicit while the bound asks for at most 100 sub-steps,
            implicit above, where the grid backend allows it; an explicit run above that bound
            warns with its estimated cost before it goes on).
        implicit_substeps: sub-steps per model step of the implicit scheme (default 4).
        observed_dims: the state coordinates the observations see (default all).
        n_experiments: ``M`` of torchsde's flattened ``(M*N, D)`` batches (default: the base's, else 1).
        sharded: the particles (forecast and observed) are this rank's share of an ensemble split
            over ``torch.distributed`` ranks; grid backend only (see the module docstring).
    """

    def __init__(self, base_sde, observations, bandwidth: float, strength: float, backend: str = "grid",
                 grid: Optional[Grid] = None, grid_shape=None, margin: Optional[float] = None,
                 substeps: Optional[int] = None, stability: float = 1.0,
                 observed_dims: Optional[Sequence[int]] = None, n_experiments: Optional[int] = None,
                 sharded: bool = False, scheme: str = "auto", implicit_substeps: int = 4):
        super().__init__()
        if not isinstance(sharded, bool):
            raise TypeError(f"sharded: expected a bool, but got {type(sharded).__name__}")
        if sharded and backend != "grid":
            raise ValueError(f"sharded: a sharded nudging velocity needs backend='grid' (the density grid is "
                             f"all-reduced), but got backend={backend!r}")
        self.sharded = sharded
        self._global_counts: Dict[int, int] = {}
        if not hasattr(base_sde, "step"):
            raise TypeError(f"base_sde: expected a model with step(t, x, dt, generator), but got {type(base_sde).__name__}")
        if not isinstance(observations, (ParticleObservations, GridObservations)):
            raise TypeError(f"observations: expected ParticleObservations or GridObservations, but got "
                            f"{type(observations).__name__}")
        self.base = base_sde
        self.observations = observations
        self.bandwidth = check_positive("bandwidth", bandwidth)
        self.strength = check_nonnegative("strength", strength)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.substeps = None if substeps is None else check_int("substeps", substeps, minimum=1)
        self.stability = check_positive("stability", stability)
        self.scheme = check_choice("scheme", scheme, SCHEMES)
        self.implicit_substeps = check_int("implicit_substeps", implicit_substeps, minimum=1)
        base_dim = getattr(base_sde, "dim", None)
        if observed_dims is None:
            observed_dims = list(range(base_dim if isinstance(base_dim, int) else observations.dim))
        observed_dims = [check_int("observed_dims", i, minimum=0) for i in observed_dims]
        if isinstance(base_dim, int) and any(i >= base_dim for i in observed_dims):
            raise ValueError(f"observed_dims: expected indices below the state dimension {base_dim}, but got {observed_dims}")
        if len(observed_dims) != observations.dim:
            raise ValueError(f"observations: dimension mismatch: the observations are {observations.dim}-D but the "
                             f"observed state coordinates {observed_dims} are {len(observed_dims)}-D")
        self.observed_dims = observed_dims
        self.dim = base_dim if isinstance(base_dim, int) else len(observed_dims)
        self.n_experiments = check_int("n_experiments", n_experiments if n_experiments is not None
                                       else getattr(base_sde, "n_experiments", 1), minimum=1)
        self.noise_type = getattr(base_sde, "noise_type", "diagonal")
        self.sde_type = getattr(base_sde, "sde_type", "ito")
        self.grid = self._choose_grid(grid, grid_shape, margin)
        if self._is_sharded():
            distributed.check_same("grid", (repr(self.grid), self.bandwidth, self.strength, self.observed_dims))
        self.periodic = self.grid is not None and self.grid.periodic
        smoothing = GaussianKernel(self.bandwidth, observations.dim)
        combined = GaussianKernel(math.sqrt(2.0) * self.bandwidth, observations.dim)
        if self.periodic:
            box = [b - a for a, b in zip(self.grid.lower, self.grid.upper)]
            smoothing, combined = PeriodicKernel(smoothing, box, images=2), PeriodicKernel(combined, box, images=2)
        self.model_kernel = combined  # K_h~ * K_h
        # kernel applied to the observed measure: K_sqrt2h for particles, K_h for given densities
        self.observation_kernel = combined if observations.kind == "particles" else smoothing
        self._fields: Dict[tuple, torch.Tensor] = {}
        self._peaks: Dict[int, float] = {}
        self._field_of_view = None
        if sharded and getattr(observations, "weights", None) is not None:
            raise ValueError("observations: masked particle observations (lost particles) are not supported with "
                             "sharded=True; each rank's share would be normalized on its own")
        if isinstance(observations, GridObservations) and observations.window is not None:
            if self.backend != "grid" or sharded or grid is not None:
                raise ValueError("observations: a field of view needs backend='grid', no sharding and the default "
                                 "grid (the image window widened by the kernel's reach)")
            self._field_of_view = _FieldOfView(self.grid, observations, smoothing)
        if self.backend == "grid":
            self._model_gradient = GridConvolution(self.grid, combined._gradient_unchecked)
            self._model_both = GridConvolution(self.grid, _ValueAndGradient(combined))
            self._observation_both = GridConvolution(self.grid, _ValueAndGradient(self.observation_kernel))
        else:
            self._model_force = InteractionForce(combined, backend="pairwise", check=False)
            self._observation_force = InteractionForce(self.observation_kernel, backend="pairwise", check=False)
        if self.scheme == "implicit" and (self.backend != "grid" or self._field_of_view is not None):
            raise ValueError("scheme: 'implicit' needs backend='grid' without a field of view (it filters the "
                             f"misfit on the grid's spectrum), but got backend={self.backend!r}")
        self._implicit_possible = self.backend == "grid" and self._field_of_view is None
        self._wavenumbers: Dict[tuple, torch.Tensor] = {}
        self._observation_masses: Dict[tuple, torch.Tensor] = {}
        self._observation_transforms: Dict[tuple, torch.Tensor] = {}
        self._planned_steps: Optional[int] = None
        self._warned_cost = False
        self._warned_hold = False
        self.last_substeps = 0
        self.total_substeps = 0
        self.last_scheme = None

    # -- set-up -----------------------------------------------------------------------------------
    def _choose_grid(self, grid, grid_shape, margin) -> Optional[Grid]:
        observations = self.observations
        if grid is not None:
            if not isinstance(grid, Grid):
                raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
            if grid.dim != observations.dim:
                raise ValueError(f"grid: expected a {observations.dim}-D grid like the observations, but got {grid.dim}-D")
            return grid
        if isinstance(observations, GridObservations) and observations.window is not None:
            return _FieldOfView.widened(observations.grid, self.bandwidth, margin)
        if isinstance(observations, GridObservations):
            return observations.grid
        if self.backend == "pairwise":
            return None
        low, high = observations.bounds()
        if self._is_sharded():  # every rank's observed particles: one grid for all ranks
            # on the observations' device: NCCL reduces CUDA tensors only
            extremes = torch.tensor([[-v for v in low], high], dtype=torch.float64,
                                    device=observations.snapshots.device)
            torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
            low, high = (-extremes[0]).tolist(), extremes[1].tolist()
        extent = [b - a for a, b in zip(low, high)]
        pad = [max(6 * self.bandwidth, 0.25 * e) if margin is None else check_nonnegative("margin", margin)
               for e in extent]
        shape = grid_shape or {1: 512, 2: 256}.get(observations.dim, 64)
        return Grid([a - p for a, p in zip(low, pad)], [b + p for b, p in zip(high, pad)], shape)

    def extra_repr(self) -> str:
        return (f"bandwidth={self.bandwidth:g}, strength={self.strength:g}, backend={self.backend!r}, "
                f"grid={self.grid!r}, substeps={self.substeps}, observed_dims={self.observed_dims}")

    # -- observation terms --------------------------------------------------------------------------
    def _batch(self, tensor: torch.Tensor, batch: int) -> torch.Tensor:
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise ValueError(f"observations: expected 1 or {batch} experiments to match the state, but got {tensor.shape[0]}")

    def _observation_field(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Grid backend: :math:`(\\nabla K * \\mu^{obs})` at the nodes, ``(M_obs, *G, d)`` (cached)."""
        key = (index, like.device, like.dtype)
        if key not in self._fields:
            for old in [k for k in self._fields if k[0] < index - 1]:
                del self._fields[old]  # observations are consumed in time order: keep a small window
            for old in [k for k in self._observation_masses if k[0] < index - 1]:
                del self._observation_masses[old]
            observations = self.observations
            if isinstance(observations, GridObservations) and observations.grid == self.grid:
                masses = observations.densities[:, index].to(like) * self.grid.cell_volume
            elif isinstance(observations, GridObservations):
                nodes = self.grid.nodes(device=like.device, dtype=like.dtype).reshape(1, -1, self.grid.dim)
                self._check_inside("grid", nodes, observations.grid, "the nudging grid's nodes")
                values = observations.grid.interpolate(observations.densities[:, index].to(like),
                                                       nodes.expand(observations.n_experiments, -1, -1))
                masses = values.reshape(-1, *self.grid.shape) * self.grid.cell_volume
            else:
                points = observations.snapshots[:, index].to(like)
                self._check_inside("observations", points, self.grid, "observed particles")
                weights = None if observations.weights is None else observations.weights[:, index].to(points)
                masses = self._reduce_masses(self.grid.deposit(points, weights), points.shape[-2])
            both = self._observation_both(masses)
            self._peaks[index] = float(both[..., 0].max())
            self._fields[key] = both[..., 1:].contiguous()
            self._observation_masses[key] = masses  # the implicit scheme filters the mass misfit
        return self._fields[key]

    def _observation_peak(self, index: int, like: torch.Tensor) -> float:
        if index not in self._peaks:
            if self.backend == "grid":
                self._observation_field(index, like)
            else:
                points, weights = self.observations.sources(index)
                points, weights = points.to(like), weights.to(like)
                self._peaks[index] = float(self._pairwise_peak(self.observation_kernel, points[:, _subsample(points)],
                                                               points, weights))
        return self._peaks[index]

    @staticmethod
    def _pairwise_peak(kernel, queries, sources, weights):
        """Max over queries of :math:`\\sum_j w_j K(q - y_j)` (chunked; the slow exact path)."""
        best = queries.new_zeros(())
        for start in range(0, queries.shape[-2], 256):
            chunk = queries[:, start:start + 256]
            values = kernel.value(chunk.unsqueeze(-2) - sources.unsqueeze(-3))
            best = torch.maximum(best, (values * weights.unsqueeze(-2)).sum(-1).max())
        return best

    def _is_sharded(self) -> bool:
        return self.sharded and distributed.is_sharded()

    def _reduce_masses(self, masses: torch.Tensor, local_count: int) -> torch.Tensor:
        """Sharded: this rank's deposit (masses 1/n_local) rescaled to 1/N_total and summed over ranks."""
        if not self._is_sharded():
            return masses
        if local_count not in self._global_counts:
            self._global_counts[local_count] = distributed.global_count(local_count, masses.device)
        masses = masses * (local_count / self._global_counts[local_count])
        return distributed.all_reduce_sum(masses)

    def _check_inside(self, name: str, points: torch.Tensor, grid: Grid, what: str) -> None:
        # one pass (aminmax) and one host synchronisation: this runs on every sub-step
        if grid.periodic:
            return
        low, high = torch.aminmax(points.reshape(-1, points.shape[-1]), dim=0)
        extremes = torch.stack((-low, high))
        if self._is_sharded():  # all ranks see the global extent, so all raise together (no hang)
            extremes = extremes.nan_to_num(nan=math.inf)
            torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
        bounds = torch.stack((-extremes[0], extremes[1])).tolist()
        if not all(math.isfinite(v) for row in bounds for v in row):
            raise ValueError(f"{name}: {what} hold NaN/inf coordinates")
        if any(l < a for l, a in zip(bounds[0], grid.lower)) or any(h > b for h, b in zip(bounds[1], grid.upper)):
            lower, upper = points.new_tensor(grid.lower), points.new_tensor(grid.upper)
            count = int(((points < lower) | (points > upper)).any(-1).sum())
            raise ValueError(f"{name}: {count} {what} lie outside the nudging grid lower={list(grid.lower)}, "
                             f"upper={list(grid.upper)}; pass a wider grid (nothing is clipped)")

    # -- the nudging velocity -----------------------------------------------------------------------
    def _observed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == len(self.observed_dims) and self.observed_dims == list(range(x.shape[-1])):
            return x
        return x[..., self.observed_dims]

    def _velocity(self, t: float, points: torch.Tensor, want_peak: bool):
        """``(v (M, N, d), model peak or None, observation peak)``; ``points`` are the observed coordinates."""
        rule = self.observations.rule(t)
        batch = points.shape[0]
        if not rule or self.strength == 0:
            return torch.zeros_like(points), None, 0.0
        if self._field_of_view is not None:
            velocity, peak, observation_peak = self._field_of_view.velocity(rule, points, want_peak)
            return -self.strength * velocity, peak, observation_peak
        if self.backend == "grid":
            field, peak = self._grid_field(t, rule, points, want_peak)
            velocity = self.grid.interpolate(field, points, check=False)
        else:
            velocity = self._model_force(points)
            peak = None
            if want_peak:
                peak = float(self._pairwise_peak(self.model_kernel, points[:, _subsample(points)], points,
                                                 points.new_full(points.shape[:-1], 1.0 / points.shape[-2])))
            for index, weight in rule:
                sources, weights = self.observations.sources(index)
                sources = self._batch(sources.to(points), batch)
                weights = self._batch(weights.to(points), batch)
                velocity = velocity - weight * self._observation_force(points, sources, weights)
        observation_peak = max(self._observation_peak(index, points) for index, _ in rule)
        return -self.strength * velocity, peak, observation_peak

    def _grid_field(self, t: float, rule, points: torch.Tensor, want_peak: bool):
        """Grid backend: ``(grad K * (mu - mu_obs) at the nodes (M, *G, d), model peak or None)``."""
        self._check_inside("grid", points, self.grid, "forecast particles")
        masses = self._reduce_masses(self.grid.deposit(points, check=False), points.shape[-2])
        peak = None
        if want_peak:
            both = self._model_both(masses)
            peak, field = float(both[..., 0].max()), both[..., 1:]
        else:
            field = self._model_gradient(masses)
        for index, weight in rule:
            field = field - weight * self._batch(self._observation_field(index, points), points.shape[0])
        if want_peak and not math.isfinite(float(field.abs().max())):
            raise ValueError(f"strength: the nudging field is not finite at t={t:g}")
        return field, peak

    def _implicit_symbol(self, damping: float, like: torch.Tensor) -> torch.Tensor:
        """:math:`1 / (1 + \tau \lambda P |k|^2 e^{-|k|^2 h^2})` on the real-FFT frequencies (``damping`` = tau lambda P)."""
        key = (like.device, like.dtype, self.grid)
        if key not in self._wavenumbers:  # |k|^2 exp(-|k|^2 h^2), the linearized decay rate per lambda P
            squared = self.grid.squared_wavenumbers(like.device, like.dtype)
            self._wavenumbers[key] = squared * torch.exp(-squared * self.bandwidth ** 2)
        return 1.0 / (1.0 + damping * self._wavenumbers[key])

    def _observation_transform(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """``rfftn`` of the observed masses at ``index`` on the FFT grid, ``(M_obs, *freq)`` (cached)."""
        key = (index, like.device, like.dtype)
        if key not in self._observation_transforms:
            for old in [k for k in self._observation_transforms if k[0] < index - 1]:
                del self._observation_transforms[old]
            self._observation_field(index, like)
            masses = self._observation_masses.pop(key)
            self._observation_transforms[key] = torch.fft.rfftn(masses, s=self.grid.fft_shape(),
                                                                dim=tuple(range(-self.grid.dim, 0)))
        return self._observation_transforms[key]

    def _observed_spectrum(self, rule, like: torch.Tensor, batch: int) -> torch.Tensor:
        """:math:`\widehat{\nabla K * \mu^{obs}}` of the rule's observations on the FFT grid, ``(M, d, *freq)``."""
        kernel = self._observation_both.spectrum(like.device, like.dtype)[1:]
        total = None
        for index, weight in rule:
            observed = self._batch(self._observation_transform(index, like), batch).unsqueeze(-self.grid.dim - 1)
            term = weight * (kernel * observed)
            total = term if total is None else total + term
        return total

    def _implicit_velocity(self, rule, points: torch.Tensor, damping: float, observed_spectrum=None,
                           symbol=None) -> torch.Tensor:
        r"""Velocity ``(M, N, d)`` of one linearly implicit sub-step of length :math:`\tau`.

        Around a density :math:`P` the nudging flow damps the misfit's mode :math:`k` at the rate
        :math:`\lambda P |k|^2 \hat G(k)` (:math:`\hat G(k) = e^{-|k|^2 h^2}` for
        :math:`G = K_{\sqrt2 h}`). The velocity here is :math:`-\lambda \nabla G * \phi * (\mu - \mu^{obs})`
        with :math:`\hat\phi = 1/(1 + \tau \lambda P |k|^2 \hat G)` (``damping`` :math:`= \tau\lambda P`):
        moving the particles with it for :math:`\tau` multiplies every mode of the misfit by
        :math:`1/(1 + \tau \lambda P |k|^2 \hat G)`, implicit Euler of that linear decay: stable for any
        :math:`\tau \lambda`, with the same fixed point (the filter is positive, so the velocity vanishes
        only where the misfit does). With the largest density for :math:`P` the damping is, if anything,
        too strong where the density is lower: the step then corrects less, never overshoots. The
        filter acts on the (scalar) mass misfit, in one FFT pair with the kernel: ``rfft`` of the
        masses, ``irfft`` of the ``d`` filtered gradient channels.
        """
        self._check_inside("grid", points, self.grid, "forecast particles")
        masses = self._reduce_masses(self.grid.deposit(points, check=False), points.shape[-2])
        dims = tuple(range(-self.grid.dim, 0))
        channel = -self.grid.dim - 1
        model = torch.fft.rfftn(masses, s=self.grid.fft_shape(), dim=dims).unsqueeze(channel)
        spectrum = self._model_gradient.spectrum(masses.device, masses.dtype) * model
        if observed_spectrum is None:
            observed_spectrum = self._observed_spectrum(rule, masses, points.shape[0])
        if symbol is None:
            symbol = self._implicit_symbol(damping, masses)
        field = torch.fft.irfftn((spectrum - observed_spectrum) * symbol, s=self.grid.fft_shape(), dim=dims)
        slices = (Ellipsis,) + tuple(slice(0, g) for g in self.grid.shape)
        field = field[slices].movedim(channel, -1)
        return -self.strength * self.grid.interpolate(field, points, check=False)

    def velocity(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """Nudging velocity at time ``t`` for states ``x (M, N, D)``: ``(M, N, D)`` (zero off ``observed_dims``)."""
        x = check_points("x", x)
        if x.ndim == 2:
            return self.velocity(t, x.unsqueeze(0)).squeeze(0)
        velocity, _, _ = self._velocity(t, self._observed(x), want_peak=False)
        return self._embed(velocity, x)

    def _embed(self, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if velocity.shape[-1] == x.shape[-1] and self.observed_dims == list(range(x.shape[-1])):
            return velocity
        full = torch.zeros_like(x)
        full[..., self.observed_dims] = velocity
        return full

    def stability_rate(self, peak: float) -> float:
        """:math:`L = \\lambda P / (e h^2)` for a peak smoothed density ``P``."""
        return self.strength * peak / (math.e * self.bandwidth ** 2)

    # -- time stepping --------------------------------------------------------------------------------
    def step(self, t: float, x: torch.Tensor, dt: float, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Base step, then the nudging flow over ``dt`` in ``n`` sub-steps (explicit or implicit): ``(M, N, D)``."""
        x = self.base.step(t, x, dt, generator)
        if self.strength == 0:
            self.last_substeps = 0
            return x
        observed = self._observed(x)
        rule = self.observations.rule(t + dt)
        if not rule:
            self.last_substeps = 0
            return x
        self._warn_past_observations(t + dt)
        want_peak = self.substeps is None or self.scheme != "explicit"
        if self._implicit_possible and self.scheme != "explicit":
            field, peak = self._grid_field(t + dt, rule, observed, want_peak)
            observation_peak = max(self._observation_peak(index, observed) for index, _ in rule)
        else:
            field = None
            velocity, peak, observation_peak = self._velocity(t + dt, observed, want_peak=want_peak)
        density = max(peak, observation_peak) if want_peak else None
        explicit_count = None if density is None else max(1, math.ceil(dt * self.stability_rate(density) /
                                                                        self.stability - 1e-12))
        implicit = field is not None and (self.scheme == "implicit" or explicit_count > _EXPLICIT_LIMIT)
        if implicit:
            count = self.substeps or min(explicit_count, self.implicit_substeps)
            observed = self._implicit_substeps(t + dt, rule, observed, dt / count, count, density)
        else:
            count = self.substeps or explicit_count
            self._announce_cost(count)
            if field is not None:
                velocity = -self.strength * self.grid.interpolate(field, observed, check=False)
            observed = self._explicit_substeps(t + dt, observed, velocity, dt / count, count)
        self.last_scheme = "implicit" if implicit else "explicit"
        self.last_substeps = count
        self.total_substeps += count
        if observed.shape[-1] == x.shape[-1] and self.observed_dims == list(range(x.shape[-1])):
            return observed
        x = x.clone()
        x[..., self.observed_dims] = observed
        return x

    def _explicit_substeps(self, t, observed, velocity, h, count):
        if self.backend == "pairwise" and not math.isfinite(float(velocity.abs().max())):
            raise ValueError(f"strength: the nudging velocity is not finite at t={t:g}")
        observed = observed + h * velocity
        for _ in range(count - 1):
            velocity, _, _ = self._velocity(t, observed, want_peak=False)
            observed = observed + h * velocity
        return observed

    def _implicit_substeps(self, t, rule, observed, h, count, density):
        damping = h * self.strength * density
        # the observed part and the filter are fixed within the step: computed once, not per sub-step
        observed_spectrum = self._observed_spectrum(rule, observed, observed.shape[0])
        symbol = self._implicit_symbol(damping, observed)
        for _ in range(count):
            observed = observed + h * self._implicit_velocity(rule, observed, damping, observed_spectrum, symbol)
        return observed

    def _warn_past_observations(self, t: float) -> None:
        """Holding the last observation past its time is a choice the user must see, once."""
        last = float(self.observations.times[-1])
        if self._warned_hold or t <= last + 1e-6 * max(1.0, abs(last)):
            return
        self._warned_hold = True
        warnings.warn(f"observations: the run passes the last observation time t={last:g} (now t={t:g}); "
                      "the last observation is held from there on", RuntimeWarning, stacklevel=3)

    def _announce_cost(self, count: int) -> None:
        """Say once, before the run goes on, what an expensive explicit integration will cost."""
        if self._warned_cost or count <= _EXPLICIT_LIMIT:
            return
        self._warned_cost = True
        total = f", about {count * self._planned_steps:,} velocity evaluations in all" if self._planned_steps else ""
        cheaper = "; scheme='implicit' (grid backend) keeps it at a few per step" if self.scheme == "explicit" \
            and self._implicit_possible else ""
        warnings.warn(f"nudging: lambda={self.strength:g} needs {count} explicit sub-steps per model step{total}"
                      f"{cheaper}", RuntimeWarning, stacklevel=3)

    # -- torchsde protocol ------------------------------------------------------------------------------
    def f(self, t, y):
        """Drift of the flattened batch ``(M*N, D)``: the base drift plus the nudging velocity."""
        if y.ndim != 2 or y.shape[0] % self.n_experiments:
            raise ValueError(f"y: expected a (M*N, D) batch with M={self.n_experiments}, but got shape {tuple(y.shape)}")
        velocity = self.velocity(float(t), y.reshape(self.n_experiments, -1, y.shape[-1])).reshape_as(y)
        return self.base.f(t, y) + velocity

    def g(self, t, y):
        return self.base.g(t, y)

    # -- driver -----------------------------------------------------------------------------------------
    def simulate(self, x0: torch.Tensor, times, dt: float, seed: Optional[int] = None, boundary=None,
                 progress: bool = True, meta: Optional[dict] = None) -> Trajectories:
        """Run the nudged model from ``x0 (M, N, D)`` and record at ``times (L,)`` (see :func:`torchmf.sde.simulate`).

        Raises ``ValueError`` if an observation time lies outside ``[times[0], times[-1]]``.
        """
        from .sde import simulate

        times_tensor = torch.as_tensor(times, dtype=torch.float64)
        if times_tensor.ndim != 1 or times_tensor.numel() < 2:
            raise ValueError("times: expected at least two recording times (L,)")
        self.observations.check_run(float(times_tensor[0]), float(times_tensor[-1]))
        x0 = check_points("x0", x0)
        if x0.shape[-1] != self.dim:
            raise ValueError(f"x0: expected state dimension {self.dim}, but got shape {tuple(x0.shape)}")
        state = x0 if x0.ndim == 3 else x0.unsqueeze(0)
        self._batch(torch.empty(self.observations.n_experiments), state.shape[0])
        info = {"nudging": {"bandwidth": self.bandwidth, "strength": self.strength, "backend": self.backend,
                            "scheme": self.scheme}}
        self._planned_steps = max(1, math.ceil(float(times_tensor[-1] - times_tensor[0]) / float(dt)))
        return simulate(self, state, times_tensor, dt, seed=seed, boundary=boundary, progress=progress,
                        meta={**info, **(meta or {})})


def _subsample(points: torch.Tensor):
    count = points.shape[-2]
    stride = max(1, count // _PEAK_QUERIES)
    return slice(0, count, stride)
