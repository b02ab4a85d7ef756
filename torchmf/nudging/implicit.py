r"""The linearly implicit nudging sub-step: stable for any strength :math:`\lambda`.

Around a density :math:`P` the nudging flow damps the misfit's mode :math:`k` at the rate
:math:`\lambda P |k|^2 e^{-|k|^2 h^2}`; explicit Euler needs sub-steps shorter than the inverse of
the largest rate (a cost linear in :math:`\lambda`). :class:`ImplicitStep` filters the misfit by
:math:`1/(1 + \tau\lambda P |k|^2 e^{-|k|^2 h^2})` on the grid's spectrum instead (implicit Euler of
the same linear decay); see :meth:`ImplicitStep.velocity`. Grid backend, no field of view.
"""
from __future__ import annotations

from typing import Dict

import torch

from .velocity import TransportVelocity

__all__ = ["ImplicitStep"]


class ImplicitStep:
    """Implicit sub-steps on the grid of ``transport`` (its deposits, kernels and observation masses)."""

    def __init__(self, transport: TransportVelocity):
        self.transport = transport
        self.grid = transport.grid
        self.bandwidth = transport.bandwidth
        self._wavenumbers: Dict[tuple, torch.Tensor] = {}
        self._observation_transforms: Dict[tuple, torch.Tensor] = {}

    def symbol(self, damping: float, like: torch.Tensor) -> torch.Tensor:
        r""":math:`1 / (1 + \tau \lambda P |k|^2 e^{-|k|^2 h^2})` on the real-FFT frequencies (``damping`` = tau lambda P)."""
        key = (like.device, like.dtype, self.grid)
        if key not in self._wavenumbers:  # |k|^2 exp(-|k|^2 h^2), the linearized decay rate per lambda P
            squared = self.grid.squared_wavenumbers(like.device, like.dtype)
            self._wavenumbers[key] = squared * torch.exp(-squared * self.bandwidth ** 2)
        return 1.0 / (1.0 + damping * self._wavenumbers[key])

    def observation_transform(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """``rfftn`` of the observed masses at ``index`` on the FFT grid, ``(M_obs, *freq)`` (cached)."""
        key = (index, like.device, like.dtype)
        if key not in self._observation_transforms:
            for old in [k for k in self._observation_transforms if k[0] < index - 1]:
                del self._observation_transforms[old]
            self.transport.observation_field(index, like)
            masses = self.transport.observation_masses.pop(key)
            self._observation_transforms[key] = torch.fft.rfftn(masses, s=self.grid.fft_shape(),
                                                                dim=tuple(range(-self.grid.dim, 0)))
        return self._observation_transforms[key]

    def observed_spectrum(self, rule, like: torch.Tensor, batch: int) -> torch.Tensor:
        r""":math:`\widehat{\nabla K * \mu^{obs}}` of the rule's observations on the FFT grid, ``(M, d, *freq)``."""
        kernel = self.transport.observation_both.spectrum(like.device, like.dtype)[1:]
        total = None
        for index, weight in rule:
            observed = self.transport.batch(self.observation_transform(index, like), batch).unsqueeze(-self.grid.dim - 1)
            term = weight * (kernel * observed)
            total = term if total is None else total + term
        return total

    def velocity(self, rule, points: torch.Tensor, damping: float, strength: float, observed_spectrum=None,
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
        self.transport.check_inside("grid", points, self.grid, "forecast particles")
        masses = self.transport.reduce_masses(self.grid.deposit(points, check=False), points.shape[-2])
        dims = tuple(range(-self.grid.dim, 0))
        channel = -self.grid.dim - 1
        model = torch.fft.rfftn(masses, s=self.grid.fft_shape(), dim=dims).unsqueeze(channel)
        spectrum = self.transport.model_gradient.spectrum(masses.device, masses.dtype) * model
        if observed_spectrum is None:
            observed_spectrum = self.observed_spectrum(rule, masses, points.shape[0])
        if symbol is None:
            symbol = self.symbol(damping, masses)
        field = torch.fft.irfftn((spectrum - observed_spectrum) * symbol, s=self.grid.fft_shape(), dim=dims)
        slices = (Ellipsis,) + tuple(slice(0, g) for g in self.grid.shape)
        field = field[slices].movedim(channel, -1)
        return -strength * self.grid.interpolate(field, points, check=False)

    def substeps(self, t, rule, observed, h, count, density, strength):
        """``count`` linearly implicit sub-steps of length ``h`` of the observed coordinates ``(M, N, d)``."""
        damping = h * strength * density
        # the observed part and the filter are fixed within the step: computed once, not per sub-step
        observed_spectrum = self.observed_spectrum(rule, observed, observed.shape[0])
        symbol = self.symbol(damping, observed)
        for _ in range(count):
            observed = observed + h * self.velocity(rule, observed, damping, strength, observed_spectrum, symbol)
        return observed
