"""Nudging to images that see only part of the population: the misfit inside a field of view."""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from .._validation import check_nonnegative
from ..data.observations import GridObservations
from ..grid import Grid, GridConvolution
from ..kernels import RadialKernel

__all__ = ["FieldOfView"]


class FieldOfView:
    r"""Misfit measured only inside the observed window :math:`W` (a field of view).

    :math:`F(\mu) = \tfrac12 \sum_{x_n \in W} (K_h * \mu - \rho^{obs})(x_n)^2\, h^d`, whose
    Wasserstein-gradient velocity is :math:`v = -\lambda\, \nabla K_h * (1_W (K_h * \mu - \rho^{obs}) h^d)`
    (with :math:`W` everything this is the usual velocity, as :math:`K_h * K_h = K_{\sqrt2 h}`).
    The computation grid is the image grid widened by the kernel's reach (same spacing, nodes on the
    pixel centres); particles beyond it are too far to touch :math:`W` (Gaussian tail below
    :math:`e^{-18}`): they carry no mass here and feel no nudging -- not an error.
    """

    def __init__(self, grid: Grid, observations: GridObservations, smoothing: RadialKernel):
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
