r"""What the point-estimate drift models and the variational posterior share: the observed path's
transitions, the Euler-Maruyama likelihood (per transition, or of a whole one-dimensional path through
its sufficient statistics, :class:`PathStatistics`) and the base noise of the fast samples.

Two independent drift estimates ``drift_a``, ``drift_b`` enter every likelihood: the product of
their residuals is an unbiased estimate of the square (see :mod:`torchmf.averaging`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .._validation import check_int, check_tensor

__all__ = ["path_transitions", "em_negative_log_likelihood", "PathStatistics", "fast_base_noise"]


def path_transitions(positions: torch.Tensor, times: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transitions of one observed slow path.

    Arguments:
        positions: ``(L, d)`` observed slow states (a ``(M, L, 1, d)`` Trajectories tensor: take one experiment).
        times: ``(L,)`` strictly increasing observation times.

    Returns:
        ``x (L-1, d)`` start states, ``dx (L-1, d)`` increments, ``dt (L-1,)`` time steps.
    """
    positions = check_tensor("positions", positions, ndim=2)
    times = check_tensor("times", torch.as_tensor(times, dtype=positions.dtype, device=positions.device), ndim=1)
    if times.numel() != positions.shape[0] or times.numel() < 2:
        raise ValueError(f"times: expected {positions.shape[0]} >= 2 entries like positions, but got {times.numel()}")
    steps = times.diff()
    if not bool((steps > 0).all()):
        raise ValueError(f"times: expected strictly increasing times, but {int((steps <= 0).sum())} steps are <= 0")
    return positions[:-1], positions.diff(dim=0), steps


def em_negative_log_likelihood(dx, dt, drift_a, drift_b, sigma) -> torch.Tensor:
    r"""Euler-Maruyama negative log-likelihood of transitions, ``(..., B)``.

    :math:`\tfrac12\sum_i\big[(dx - F^{(1)} dt)(dx - F^{(2)} dt)/(\sigma^2 dt) + \log(2\pi\sigma^2 dt)\big]_i`
    with two independent drift estimates ``drift_a``, ``drift_b`` ``(..., B, d)`` (equal for an
    exact drift); ``dx (B, d)``, ``dt (B,)``, ``sigma (..., 1, d)`` or ``(d,)``.
    """
    step = dt.unsqueeze(-1)
    variance = sigma**2 * step
    residual = (dx - drift_a * step) * (dx - drift_b * step)
    return 0.5 * (residual / variance + torch.log(2 * math.pi * variance)).sum(-1)


class PathStatistics(nn.Module):
    r"""The Euler-Maruyama likelihood of a whole one-dimensional path through its sufficient statistics.

    With :math:`F` linear between ``n_nodes`` equally spaced nodes :math:`z_k` spanning the observed
    states (``F(x_i) = \sum_k W_{ik} F_k``, two non-zero weights per row), the path's negative
    log-likelihood :math:`\sum_i (dx_i - F(x_i)dt_i)^2 / (2\sigma^2 dt_i) + \ldots` is a quadratic
    form in the node values with coefficients :math:`W^\top dx` and the tridiagonal
    :math:`W^\top \mathrm{diag}(dt) W`, summed once from the data. Each training step then sees
    the likelihood of every transition for the price of ``n_nodes`` drift evaluations: no
    minibatch noise. The interpolation error is at most :math:`h^2 \max|F''| / 8` (``h`` the
    node spacing; about 3e-4 for ``fastslow_cubic`` with 256 nodes).

    Arguments: ``x, dx (n, 1)`` start states and increments, ``dt (n,)`` time steps (one slow dimension).
    Buffers follow the module's device and dtype; sums are taken in float64.
    """

    def __init__(self, x: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor, n_nodes: int = 256):
        super().__init__()
        x = check_tensor("x", x, ndim=2).double()
        if x.shape[-1] != 1:
            raise ValueError(f"x: path statistics need one slow dimension, but got d = {x.shape[-1]}")
        dx = check_tensor("dx", dx, ndim=2).double().reshape(-1)
        dt = check_tensor("dt", dt, ndim=1).double()
        if not x.shape[0] == dx.numel() == dt.numel() or not bool((dt > 0).all()):
            raise ValueError(f"dt: expected {x.shape[0]} positive time steps like x and dx, but got {dt.numel()}")
        nodes_count = check_int("n_nodes", n_nodes, minimum=2)
        low, high = float(x.min()), float(x.max())
        high = high if high > low else low + 1.0
        position = (x[:, 0] - low) / (high - low) * (nodes_count - 1)
        index = position.floor().clamp(0, nodes_count - 2).long()
        weight = position - index  # share of the right-hand node
        def scatter(values, offset=0, size=nodes_count):
            return torch.zeros(size, dtype=torch.float64).index_add_(0, index + offset, values)
        self.count = x.shape[0]
        self.register_buffer("nodes", torch.linspace(low, high, nodes_count, dtype=torch.float64).unsqueeze(-1))
        self.register_buffer("linear", scatter((1 - weight) * dx) + scatter(weight * dx, 1))
        self.register_buffer("diagonal", scatter((1 - weight) ** 2 * dt) + scatter(weight**2 * dt, 1))
        self.register_buffer("off_diagonal", scatter(weight * (1 - weight) * dt, size=nodes_count)[:-1])
        self.register_buffer("constant", torch.stack(((dx**2 / dt).sum(), torch.log(2 * math.pi * dt).sum())))

    def mean_nll(self, drift_a: torch.Tensor, drift_b: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per transition from two independent estimates of the node
        drifts ``(..., G, 1)`` and ``sigma`` ``(..., 1)`` or ``(1,)``: shape ``(...)``."""
        first, second = drift_a[..., 0], drift_b[..., 0]
        linear, diagonal, off = (self.linear.to(first), self.diagonal.to(first), self.off_diagonal.to(first))
        quadratic = (first * diagonal * second).sum(-1) + (off * (first[..., :-1] * second[..., 1:]
                                                                 + first[..., 1:] * second[..., :-1])).sum(-1)
        squares = self.constant[0].to(first) - ((first + second) * linear).sum(-1) + quadratic
        variance = sigma[..., 0] ** 2
        return 0.5 * (squares / variance + self.count * torch.log(variance) + self.constant[1].to(first)) / self.count


def fast_base_noise(shape, generator: Optional[torch.Generator], like: torch.Tensor, stratified: bool = False):
    """Standard normal base noise ``shape = (B, S, k)`` on ``like``'s device and dtype.

    ``stratified`` (``k = 1``, even ``S``): each half of the ``S`` draws takes one draw per
    equal-probability stratum, still unbiased for means, with far smaller Monte-Carlo noise; the two
    halves stay independent (the unbiased two-halves products rely on it). Otherwise plain draws.
    """
    batch, count, features = shape
    if stratified and features == 1 and count % 2 == 0:
        half = count // 2
        uniform = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float64)
        strata = torch.arange(half, device=like.device, dtype=torch.float64).repeat(2).reshape(1, count, 1)
        # in float64 and kept strictly inside (0, 1): torch.rand can return 0, and (strata + u) / half
        # rounds to exactly 1 for large strata counts; ndtri(0 or 1) is -inf or inf
        probability = ((strata + uniform) / half).clamp(1e-300, 1 - 2**-53)
        return torch.special.ndtri(probability).to(like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
