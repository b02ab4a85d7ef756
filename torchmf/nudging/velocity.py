r"""The nudging velocity: the Wasserstein gradient of the smoothed-density misfit.

:math:`v(x) = -\lambda\,\big[(\nabla K_{\sqrt2 h} * \mu)(x) - (\nabla K * \mu^{obs})(x)\big]`; see
:mod:`torchmf.nudging` for the derivation. :class:`TransportVelocity` computes it without the factor
:math:`-\lambda` (which :class:`~torchmf.nudging.sde.NudgedSDE` applies), on the grid chosen by
:func:`computation_grid`.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn

from .. import distributed
from .._validation import check_nonnegative
from ..data.observations import GridObservations
from ..grid import Grid, GridConvolution
from ..interaction import InteractionForce
from ..kernels import GaussianKernel, PeriodicKernel, RadialKernel
from .field_of_view import FieldOfView

__all__ = ["TransportVelocity", "computation_grid"]

_PEAK_QUERIES = 2048  # particles at which the pairwise backend samples the forecast's peak density


def computation_grid(observations, backend: str, bandwidth: float, grid: Optional[Grid], grid_shape,
                     margin: Optional[float], sharded: bool) -> Optional[Grid]:
    """The grid the velocity is computed on: ``grid`` as given (checked), the widened image window of a
    field of view, the observation grid of images, ``None`` for the pairwise backend, else a free-space
    grid over the observed particles (all ranks' when ``sharded``) padded by ``margin``."""
    if grid is not None:
        if not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
        if grid.dim != observations.dim:
            raise ValueError(f"grid: expected a {observations.dim}-D grid like the observations, but got {grid.dim}-D")
        return grid
    if isinstance(observations, GridObservations) and observations.window is not None:
        return FieldOfView.widened(observations.grid, bandwidth, margin)
    if isinstance(observations, GridObservations):
        return observations.grid
    if backend == "pairwise":
        return None
    low, high = observations.bounds()
    if sharded and distributed.is_sharded():  # every rank's observed particles: one grid for all ranks
        # on the observations' device: NCCL reduces CUDA tensors only
        extremes = torch.tensor([[-v for v in low], high], dtype=torch.float64,
                                device=observations.snapshots.device)
        torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
        low, high = (-extremes[0]).tolist(), extremes[1].tolist()
    extent = [b - a for a, b in zip(low, high)]
    pad = [max(6 * bandwidth, 0.25 * e) if margin is None else check_nonnegative("margin", margin)
           for e in extent]
    shape = grid_shape or {1: 512, 2: 256}.get(observations.dim, 64)
    return Grid([a - p for a, p in zip(low, pad)], [b + p for b, p in zip(high, pad)], shape)


class TransportVelocity(nn.Module):
    r"""The Wasserstein gradient of the smoothed-density misfit, per unit strength.

    For the observed coordinates ``points (M, N, d)`` of the forecast and the observation rule at
    ``t`` it returns :math:`-v / \lambda = \nabla K_{\sqrt2 h} * \mu - \nabla K * \mu^{obs}` at the
    particles (``K = K_{\sqrt2 h}`` for particle observations, ``K_h`` for given densities; only inside
    the window for a :class:`~torchmf.nudging.field_of_view.FieldOfView`), with the peak smoothed
    densities the sub-step bound needs. Backends: ``"grid"`` (deposit, FFT convolution, interpolation;
    observation fields cached per observation) and ``"pairwise"`` (exact sums). Sharded: the deposits
    are all-reduced over the ranks (see :mod:`torchmf.distributed`).
    """

    def __init__(self, observations, bandwidth: float, backend: str, grid: Optional[Grid], sharded: bool,
                 grid_given: bool):
        super().__init__()
        self.observations = observations
        self.bandwidth = bandwidth
        self.backend = backend
        self.grid = grid
        self.sharded = sharded
        self._global_counts: Dict[int, int] = {}
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
        self.field_of_view = None
        if sharded and getattr(observations, "weights", None) is not None:
            raise ValueError("observations: masked particle observations (lost particles) are not supported with "
                             "sharded=True; each rank's share would be normalized on its own")
        if isinstance(observations, GridObservations) and observations.window is not None:
            if self.backend != "grid" or sharded or grid_given:
                raise ValueError("observations: a field of view needs backend='grid', no sharding and the default "
                                 "grid (the image window widened by the kernel's reach)")
            self.field_of_view = FieldOfView(self.grid, observations, smoothing)
        if self.backend == "grid":
            self.model_gradient = GridConvolution(self.grid, combined._gradient_unchecked)
            self.model_both = GridConvolution(self.grid, _ValueAndGradient(combined))
            self.observation_both = GridConvolution(self.grid, _ValueAndGradient(self.observation_kernel))
        else:
            self.model_force = InteractionForce(combined, backend="pairwise", check=False)
            self.observation_force = InteractionForce(self.observation_kernel, backend="pairwise", check=False)
        # observed masses per observation, kept for the implicit scheme (which filters the mass misfit)
        self.observation_masses: Dict[tuple, torch.Tensor] = {}

    def misfit(self, t: float, rule, points: torch.Tensor, want_peak: bool):
        """``(-v / lambda (M, N, d), model peak or None, observation peak)`` for the observed coordinates
        ``points (M, N, d)`` and the observation ``rule`` at ``t`` (not empty)."""
        batch = points.shape[0]
        if self.field_of_view is not None:
            return self.field_of_view.velocity(rule, points, want_peak)
        if self.backend == "grid":
            field, peak = self.grid_field(t, rule, points, want_peak)
            velocity = self.grid.interpolate(field, points, check=False)
        else:
            velocity = self.model_force(points)
            peak = None
            if want_peak:
                peak = float(self.pairwise_peak(self.model_kernel, points[:, _subsample(points)], points,
                                                 points.new_full(points.shape[:-1], 1.0 / points.shape[-2])))
            for index, weight in rule:
                sources, weights = self.observations.sources(index)
                sources = self.batch(sources.to(points), batch)
                weights = self.batch(weights.to(points), batch)
                velocity = velocity - weight * self.observation_force(points, sources, weights)
        observation_peak = max(self.observation_peak(index, points) for index, _ in rule)
        return velocity, peak, observation_peak

    def grid_field(self, t: float, rule, points: torch.Tensor, want_peak: bool):
        """Grid backend: ``(grad K * (mu - mu_obs) at the nodes (M, *G, d), model peak or None)``."""
        self.check_inside("grid", points, self.grid, "forecast particles")
        masses = self.reduce_masses(self.grid.deposit(points, check=False), points.shape[-2])
        peak = None
        if want_peak:
            both = self.model_both(masses)
            peak, field = float(both[..., 0].max()), both[..., 1:]
        else:
            field = self.model_gradient(masses)
        for index, weight in rule:
            field = field - weight * self.batch(self.observation_field(index, points), points.shape[0])
        if want_peak and not math.isfinite(float(field.abs().max())):
            raise ValueError(f"strength: the nudging field is not finite at t={t:g}")
        return field, peak

    def batch(self, tensor: torch.Tensor, batch: int) -> torch.Tensor:
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise ValueError(f"observations: expected 1 or {batch} experiments to match the state, but got {tensor.shape[0]}")

    def observation_field(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Grid backend: :math:`(\\nabla K * \\mu^{obs})` at the nodes, ``(M_obs, *G, d)`` (cached)."""
        key = (index, like.device, like.dtype)
        if key not in self._fields:
            for old in [k for k in self._fields if k[0] < index - 1]:
                del self._fields[old]  # observations are consumed in time order: keep a small window
            for old in [k for k in self.observation_masses if k[0] < index - 1]:
                del self.observation_masses[old]
            observations = self.observations
            if isinstance(observations, GridObservations) and observations.grid == self.grid:
                masses = observations.densities[:, index].to(like) * self.grid.cell_volume
            elif isinstance(observations, GridObservations):
                nodes = self.grid.nodes(device=like.device, dtype=like.dtype).reshape(1, -1, self.grid.dim)
                self.check_inside("grid", nodes, observations.grid, "the nudging grid's nodes")
                values = observations.grid.interpolate(observations.densities[:, index].to(like),
                                                       nodes.expand(observations.n_experiments, -1, -1))
                masses = values.reshape(-1, *self.grid.shape) * self.grid.cell_volume
            else:
                points = observations.snapshots[:, index].to(like)
                self.check_inside("observations", points, self.grid, "observed particles")
                weights = None if observations.weights is None else observations.weights[:, index].to(points)
                masses = self.reduce_masses(self.grid.deposit(points, weights), points.shape[-2])
            both = self.observation_both(masses)
            self._peaks[index] = float(both[..., 0].max())
            self._fields[key] = both[..., 1:].contiguous()
            self.observation_masses[key] = masses  # the implicit scheme filters the mass misfit
        return self._fields[key]

    def observation_peak(self, index: int, like: torch.Tensor) -> float:
        if index not in self._peaks:
            if self.backend == "grid":
                self.observation_field(index, like)
            else:
                points, weights = self.observations.sources(index)
                points, weights = points.to(like), weights.to(like)
                self._peaks[index] = float(self.pairwise_peak(self.observation_kernel, points[:, _subsample(points)],
                                                               points, weights))
        return self._peaks[index]

    @staticmethod
    def pairwise_peak(kernel, queries, sources, weights):
        """Max over queries of :math:`\\sum_j w_j K(q - y_j)` (chunked; the slow exact path)."""
        best = queries.new_zeros(())
        for start in range(0, queries.shape[-2], 256):
            chunk = queries[:, start:start + 256]
            values = kernel.value(chunk.unsqueeze(-2) - sources.unsqueeze(-3))
            best = torch.maximum(best, (values * weights.unsqueeze(-2)).sum(-1).max())
        return best

    def is_sharded(self) -> bool:
        return self.sharded and distributed.is_sharded()

    def reduce_masses(self, masses: torch.Tensor, local_count: int) -> torch.Tensor:
        """Sharded: this rank's deposit (masses 1/n_local) rescaled to 1/N_total and summed over ranks."""
        if not self.is_sharded():
            return masses
        if local_count not in self._global_counts:
            self._global_counts[local_count] = distributed.global_count(local_count, masses.device)
        masses = masses * (local_count / self._global_counts[local_count])
        return distributed.all_reduce_sum(masses)

    def check_inside(self, name: str, points: torch.Tensor, grid: Grid, what: str) -> None:
        # one pass (aminmax) and one host synchronisation: this runs on every sub-step
        if grid.periodic:
            return
        low, high = torch.aminmax(points.reshape(-1, points.shape[-1]), dim=0)
        extremes = torch.stack((-low, high))
        if self.is_sharded():  # all ranks see the global extent, so all raise together (no hang)
            extremes = extremes.nan_to_num(nan=math.inf)
            torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
        bounds = torch.stack((-extremes[0], extremes[1])).tolist()
        if not all(math.isfinite(v) for row in bounds for v in row):
            raise ValueError(f"{name}: {what} hold NaN/inf coordinates")
        if any(l < a for l, a in zip(bounds[0], grid.lower)) or any(h > b for h, b in zip(bounds[1], grid.upper)):
            lower, upper = points.new_tensor(grid.lower), points.new_tensor(grid.upper)
            count = int(((points < lower) | (points > upper)).any(-1).sum())
            raise ValueError(f"{name}: {count} {what} lie outside the nudging grid lower={list(grid.lower)}, "
                             f"upper={list(grid.upper)}; pass a wider grid (grid= or margin=; for images that see only "
                             f"their window, field_of_view=True; nothing is clipped)")


class _ValueAndGradient:
    """Kernel callable for :class:`GridConvolution`: offsets ``(..., d) -> (..., 1 + d)`` (value, gradient)."""

    def __init__(self, kernel: RadialKernel):
        self.kernel = kernel

    def __call__(self, offsets):
        return torch.cat([self.kernel.value(offsets).unsqueeze(-1), self.kernel._gradient_unchecked(offsets)], -1)


def _subsample(points: torch.Tensor):
    count = points.shape[-2]
    stride = max(1, count // _PEAK_QUERIES)
    return slice(0, count, stride)
