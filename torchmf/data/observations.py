r"""Observations of a particle system over time: what the nudging (and every method that assimilates
data) compares its particles with.

- :class:`ParticleObservations` -- reference particle snapshots ``(L, N, d)`` or ``(M, L, N, d)``
  at observation times ``(L,)`` (a :class:`~torchmf.data.trajectories.Trajectories`, masks
  included); they are smoothed with the same kernel as the forecast.
- :class:`GridObservations` -- smoothed densities ``(L, G_1..G_d)`` or ``(M, L, G_1..G_d)`` given
  on the nodes of a grid with its spatial extent (images at any resolution, in numpy's axis order
  or torchmf's), optionally only inside a field of view.
- :func:`density_observations` -- the observation operator :math:`K_h * \mu_t` applied to a
  reference run: its images on a grid.
- :func:`initial_particles` -- particles drawn from the first observation.

Between observation times the rule is ``"hold"`` (the latest observation at or before ``t``) or
``"linear"`` (interpolation between the two neighbouring observations; the last one is held
after the final time). Before the first observation time there is no information (the rule is
empty). Optional observation noise (a fixed, seeded realization drawn at construction):
Gaussian noise of standard deviation ``noise`` added to the snapshot positions, or to the density
values (absolute units of density).
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._validation import check_choice, check_int, check_nonnegative, check_positive, check_tensor
from ..grid import Grid
from ..smoothing import smoothed_density
from .trajectories import Trajectories

__all__ = ["ParticleObservations", "GridObservations", "density_observations", "initial_particles",
           "INTERPOLATIONS"]

INTERPOLATIONS = ("hold", "linear")
_TIME_TOLERANCE = 1e-9


class _Observations:
    """Shared time handling: ``times (L,)`` and the rule between them."""

    kind = "abstract"
    _per_time: Tuple[str, ...] = ()

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

    def head(self, count: int):
        """The same observations at their first ``count`` times only (the rest held out): a copy."""
        count = check_int("count", count, minimum=1)
        if count > self.n_times:
            raise ValueError(f"count: expected at most {self.n_times} observation times, but got {count}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.times = self.times[:count]
        for name in self._per_time:  # (M, L, ...) arrays of the observations
            if getattr(self, name, None) is not None:
                setattr(copy, name, getattr(self, name)[:, :count])
        return copy

    def check_run(self, start: float, end: float) -> None:
        """Raise if an observation time lies outside the run ``[start, end]``."""
        low, high = float(self.times[0]), float(self.times[-1])
        if low < start - 1e-6 or high > end + 1e-6:
            raise ValueError(f"observations: observation times span [{low:g}, {high:g}], outside the run "
                             f"[{start:g}, {end:g}]; pass observations inside the simulated interval")


class ParticleObservations(_Observations):
    """Reference particle snapshots at observation times.

    Arguments:
        snapshots: ``(L, N, d)``, ``(M, L, N, d)`` or a :class:`~torchmf.data.Trajectories`; a
            Trajectories with a ``mask`` (lost particles, varying counts per frame) observes at each
            time the empirical measure of its observed particles (weights ``1/n_observed``).
        times: observation times ``(L,)`` (default: the Trajectories' times).
        interpolation: ``"hold"`` or ``"linear"`` between observation times.
        noise: standard deviation of Gaussian noise added once to the positions (default 0).
        seed: seed of that noise.
    """

    kind = "particles"
    _per_time = ("snapshots", "weights")

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
        background: ``None`` (the values are the density as given: a constant floor under every frame,
            see :mod:`torchmf.data.background`, is warned about, or refused with ``strict=True``),
            ``"auto"`` (each frame's floor estimated and subtracted before ``normalize``) or a number
            (that floor subtracted). The floor used is kept as ``self.background``. Negative pixels in
            the values as given are warned about (a density is never negative).
        strict: refuse (``ValueError``) instead of warning where the images are not a density (a floor).
        names: what the messages call ``background`` and ``normalize`` (the command line passes its flags).
    """

    kind = "density"
    _per_time = ("densities",)

    def __init__(self, densities, extent, times, periodic: bool = False, interpolation: str = "hold",
                 noise: float = 0.0, seed: int = 0, indexing: Optional[str] = None, origin: str = "lower",
                 normalize=False, field_of_view=False, background=None, strict: bool = False, names=None):
        if isinstance(densities, np.ndarray):
            densities = torch.from_numpy(np.ascontiguousarray(densities))
        densities = check_tensor("densities", densities)
        self._names = names
        self._from_grid = isinstance(extent, Grid)
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
        densities = self._floor_removed(densities, background, strict)
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

    def _floor_removed(self, densities: torch.Tensor, background, strict: bool) -> torch.Tensor:
        """Check the values as given (negative pixels, a constant floor), then subtract ``background``."""
        from . import background as floors

        values = densities.detach().cpu().numpy()
        negative = floors.negative_message(values, self._names)
        if negative is not None:
            warnings.warn(negative, UserWarning, stacklevel=4)
        self.background = None
        if background is None and (self._from_grid or self.grid.periodic):
            return densities  # torchmf's own densities, or a torus that a population may fill evenly
        if background is None:
            floor = floors.check_floor(values, self.grid.dim, self._names)
            if floor is not None and strict:
                raise ValueError(floor)
            if floor is not None:
                warnings.warn(floor, UserWarning, stacklevel=4)
            return densities
        removed, self.background = floors.remove_background(values, self.grid.dim, background)
        return torch.from_numpy(removed).to(densities)

    def blurred(self, sigma: float) -> "GridObservations":
        """These images convolved with a Gaussian of standard deviation ``sigma`` (free space: mass
        within ``3 sigma`` of the window's edge partly leaves it). Images of blur ``s`` become images of
        blur ``sqrt(s^2 + sigma^2)``: what makes them match a nudging bandwidth wider than their blur."""
        from ..grid import GridConvolution
        from ..kernels import GaussianKernel

        sigma = check_positive("sigma", sigma)
        smoothing = GridConvolution(self.grid, GaussianKernel(sigma, self.grid.dim).value)
        blurred = smoothing(self.densities * self.grid.cell_volume).squeeze(-1)
        copy = object.__new__(GridObservations)
        copy.__dict__.update(self.__dict__)
        copy.densities = blurred
        return copy

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
                              f"them with a probability density: pass {self._normalize_advice()}",
                              UserWarning, stacklevel=3)
            return densities
        target = 1.0 if normalize is True else check_positive("normalize", normalize)
        if target > 1:
            raise ValueError(f"normalize: expected True, False or a mass fraction in (0, 1], but got {normalize!r}")
        if not bool((masses > 0).all()):
            raise ValueError("normalize: an image has zero or negative total mass; it cannot be normalized")
        return densities * (target / masses).reshape(*masses.shape, *([1] * self.grid.dim))

    def _normalize_advice(self) -> str:
        name = (self._names or {}).get("normalize")
        if name is not None:  # the command line's flag
            return f"{name} (each image scaled to mass 1)"
        return "normalize=True (or the fraction of the population in the field of view)"

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


def initial_particles(observations, count: int, seed: int, above_noise: bool = False):
    """``(1, count, d)`` particles drawn from the first observation: resampled observed particles, or
    pixels drawn with probability proportional to their value and placed uniformly inside the pixel
    (the part of it inside the grid of pixel centres, where the nudging computes).

    ``above_noise``: for an image whose background was subtracted (its noise about 0 leaves negative
    and small positive pixels everywhere): only pixels above the noise, more than 3 noise spreads
    (sigma-clipped, :func:`torchmf.data.background.estimate_background`) over the empty level, are
    drawn from; without it a negative pixel is refused."""
    generator = torch.Generator().manual_seed(seed)
    points, weights = observations.sources(0)
    points, weights = points[0].double().cpu(), weights[0].double().cpu()
    if above_noise:
        from .background import estimate_background

        empty = estimate_background(weights.numpy()[None], 1)  # one frame of flattened pixels
        weights = torch.where(weights > float(empty.levels[0]) + 3 * float(empty.noise[0]), weights, 0.0)
        if not bool((weights > 0).any()):
            raise ValueError("--observations: the first image holds no pixel above its noise; cannot draw particles "
                             "from it (pass --initial FILE)")
    if bool((weights < 0).any()):
        raise ValueError("--observations: the first image has negative values; cannot draw particles from it "
                         "(pass --initial FILE)")
    chosen = torch.multinomial(weights, count, replacement=True, generator=generator)
    start = points[chosen]
    if isinstance(observations, GridObservations):
        grid = observations.grid
        half = 0.5 * torch.tensor(grid.spacing, dtype=torch.float64)
        low, high = start - half, start + half
        if not grid.periodic:  # edge pixels: their inner half only
            low = torch.maximum(low, torch.tensor(grid.lower, dtype=torch.float64))
            high = torch.minimum(high, torch.tensor(grid.upper, dtype=torch.float64))
        start = low + torch.rand(start.shape, generator=generator, dtype=torch.float64) * (high - low)
    return start.unsqueeze(0)
