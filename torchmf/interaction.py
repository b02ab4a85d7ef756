r"""Mean-field interaction force :math:`F(x) = (\nabla K * \mu^N)(x) = \sum_j w_j \nabla K(x - y_j)`.

Three interchangeable backends, chosen by one argument:

``"pairwise"``
    exact; queries are processed in chunks so memory is ``O(chunk x N)``, never ``N x N``.
``"grid"``
    cloud-in-cell deposit of the sources on a :class:`~torchmf.grid.Grid`, FFT convolution with
    :math:`\nabla K` sampled at node offsets (zero-padded free space or periodic), cloud-in-cell
    interpolation back to the queries: ``O(N + G log G)``. Its error is the grid's
    discretization error, ``O(h^2)`` for smooth kernels on the scale of a few cells.
``"keops"``
    exact, symbolic reductions with pykeops (optional extra, CPU accelerator; never imported
    unless asked for).
``"auto"``
    pairwise while ``N_query x N_source <= 1e8``, grid above (``d <= 3``).

Shapes: queries ``x (..., Nq, d)``, sources ``y (..., Ns, d)`` with the same batch dimensions
(experiments), weights ``(..., Ns)`` (default ``1/Ns``); the result is ``(..., Nq, d)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import distributed
from ._validation import check_choice, check_int, check_points, check_tensor
from .grid import Grid, GridConvolution
from .kernels import PowerPotential, RadialKernel, potential_from_spec

__all__ = ["InteractionForce", "interaction_force", "BACKENDS"]

BACKENDS = ("auto", "pairwise", "grid", "keops")
_PAIRWISE_BUDGET = 1 << 20  # elements of one chunk's (chunk, Ns) matrix: cache-sized blocks run fastest
_AUTO_PAIRWISE_LIMIT = 1e8


class InteractionForce(nn.Module):
    """Evaluate :math:`(\\nabla K * \\mu^N)(x)` with a chosen backend.

    Arguments:
        potential: a :class:`~torchmf.kernels.RadialKernel` (or a spec accepted by
            :func:`~torchmf.kernels.potential_from_spec`).
        backend: ``"pairwise"``, ``"grid"``, ``"keops"`` or ``"auto"``.
        grid: a fixed :class:`~torchmf.grid.Grid` for the grid backend (its kernel spectrum is
            cached, so repeated calls cost one deposit, three FFT passes and one interpolation).
            Without one, a free-space grid covering queries and sources is built on every call.
        grid_shape: nodes per dimension of the automatic grid (default 256 in 2-D, 2048 in 1-D,
            64 in 3-D).
        chunk_size: queries per chunk of the pairwise backend (default: sized to keep one chunk's
            ``(chunk, Ns)`` matrix near 1M elements, which runs fastest on CPU caches).
        check: validate inputs on every call (one host synchronisation for the NaN check; set
            False inside integrators that have validated their state).
        sharded: the sources are this process's share of an ensemble split over
            ``torch.distributed`` ranks (see :mod:`torchmf.distributed`): the grid backend
            all-reduces the deposited grid (needs a fixed ``grid``), the quadratic potential its
            first moment, the pairwise backend gathers the sources. Outside a process group of
            several ranks it changes nothing.
        deposit_method: :meth:`~torchmf.grid.Grid.deposit`'s ``method`` (``"auto"``,
            ``"atomic"`` or ``"sorted"``) for the grid backend.
    """

    def __init__(self, potential, backend: str = "pairwise", grid: Optional[Grid] = None,
                 grid_shape=None, chunk_size: Optional[int] = None, check: bool = True, sharded: bool = False,
                 deposit_method: str = "auto"):
        super().__init__()
        self.potential: RadialKernel = potential_from_spec(potential)
        self.backend = check_choice("backend", backend, BACKENDS)
        if grid is not None and not isinstance(grid, Grid):
            raise TypeError(f"grid: expected a torchmf.grid.Grid, but got {type(grid).__name__}")
        self.grid = grid
        self.grid_shape = grid_shape
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, minimum=1)
        self.check = check
        self._convolution = GridConvolution(grid, self.potential._gradient_unchecked) if grid is not None else None
        self.sharded = bool(sharded)
        self.deposit_method = check_choice("deposit_method", deposit_method, ("auto", "atomic", "sorted"))
        self._ranks_agree = False

    def extra_repr(self) -> str:
        return f"potential={self.potential!r}, backend={self.backend!r}, grid={self.grid!r}"

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Force at queries ``x (..., Nq, d)`` from sources ``y (..., Ns, d)`` (default ``y = x``)."""
        if y is None:
            y = x
        if self.check:
            x = check_points("x", x)
            y = check_points("y", y, x.shape[-1])
            if x.shape[:-2] != y.shape[:-2]:
                raise ValueError(f"y: expected batch dimensions {tuple(x.shape[:-2])} like x, but got {tuple(y.shape[:-2])}")
            if weights is not None:
                weights = check_tensor("weights", weights)
                if tuple(weights.shape) != tuple(y.shape[:-1]):
                    raise ValueError(f"weights: expected shape {tuple(y.shape[:-1])}, but got {tuple(weights.shape)}")
            if self.grid is not None and self.grid.dim != x.shape[-1]:
                raise ValueError(f"x: expected dimension {self.grid.dim} to match the grid, but got {x.shape[-1]}")
        if self.sharded and distributed.is_sharded():
            return self._sharded(x, y, weights)
        backend = self.backend
        if backend == "auto":
            small = x.shape[-2] * y.shape[-2] <= _AUTO_PAIRWISE_LIMIT
            backend = "pairwise" if small or x.shape[-1] > 3 else "grid"
        if backend == "pairwise":
            if isinstance(self.potential, PowerPotential) and self.potential.exponent == 2:
                return self._quadratic(x, y, weights)
            return self._pairwise(x, y, weights)
        if backend == "grid":
            return self._grid(x, y, weights)
        return self._keops(x, y, weights)

    # -- backends -------------------------------------------------------------------------------
    def _pairwise(self, x, y, weights):
        n_sources, dim = y.shape[-2], y.shape[-1]
        batch = x.shape[:-2].numel() if x.ndim > 2 else 1
        if weights is None:
            weights = y.new_full(y.shape[:-1], 1.0 / n_sources)
        radial = type(self.potential)._gradient_unchecked is RadialKernel._gradient_unchecked
        per_query = n_sources if radial else n_sources * dim
        chunk = self.chunk_size or max(1, _PAIRWISE_BUDGET // max(1, batch * per_query))
        pieces = []
        for start in range(0, x.shape[-2], chunk):
            queries = x[..., start:start + chunk, :]
            if radial:
                pieces.append(self._pairwise_radial_chunk(queries, y, weights))
            else:
                gradients = self.potential._gradient_unchecked(queries.unsqueeze(-2) - y.unsqueeze(-3))
                pieces.append((gradients * weights.unsqueeze(-2).unsqueeze(-1)).sum(-2))
        return torch.cat(pieces, dim=-2)

    def _pairwise_radial_chunk(self, queries, y, weights):
        # sum_j w_j k'(r_ij)/r_ij (x_i - y_j) = x_i (S w)_i - (S (w y))_i with S_ij = k'(r_ij)/r_ij:
        # one (chunk, Ns) matrix and two matrix products instead of a (chunk, Ns, d) tensor.
        # Shifting by the chunk's centre keeps the subtraction well conditioned.
        centre = queries.mean(-2, keepdim=True)
        queries, sources = queries - centre, y - centre
        distance = torch.cdist(queries, sources, compute_mode="donot_use_mm_for_euclid_dist")
        positive = distance > 0
        safe = torch.where(positive, distance, torch.ones_like(distance))
        scale = torch.where(positive, self.potential.profile_derivative(safe) / safe, torch.zeros_like(distance))
        scale = scale * weights.unsqueeze(-2)
        if scale.dtype in (torch.float64, torch.complex128):
            return queries * scale.sum(-1, keepdim=True) - scale @ sources
        # the two terms nearly cancel: in float32 their difference loses ~eps * N relative accuracy
        # (5e-4 at N = 1e6), so the reference backend accumulates them in float64 (each term's
        # float32 rounding then stays ~1e-7, as in a plain sum of the differences)
        wide = scale.double()
        force = queries.double() * wide.sum(-1, keepdim=True) - wide @ sources.double()
        return force.to(queries.dtype)

    def _sharded(self, x, y, weights):
        """Same result as one process holding every rank's sources (see torchmf.distributed)."""
        if not self._ranks_agree:
            distributed.check_same("grid", (self.backend, repr(self.potential), repr(self.grid)))
            self._ranks_agree = True
        if weights is None:
            # one all-reduce and host read per local size, not per step (sizes do not change in a run)
            counts = self.__dict__.setdefault("_global_counts", {})
            if y.shape[-2] not in counts:
                counts[y.shape[-2]] = distributed.global_count(y.shape[-2], y.device)
            weights = y.new_full(y.shape[:-1], 1.0 / counts[y.shape[-2]])
        if isinstance(self.potential, PowerPotential) and self.potential.exponent == 2 and self.backend != "grid":
            moments = torch.cat([(weights.unsqueeze(-1) * y).sum(-2), weights.sum(-1, keepdim=True)], dim=-1)
            distributed.all_reduce_sum(moments)
            mean, mass = moments[..., :-1].unsqueeze(-2), moments[..., -1:].unsqueeze(-2)
            return 2 * self.potential.coefficient * (x * mass - mean)
        if self.backend == "grid":
            if self._convolution is None:
                raise ValueError("grid: a sharded grid force needs a fixed grid shared by all ranks, but got grid=None")
            masses = distributed.all_reduce_sum(self._convolution.grid.deposit(y, weights, check=self.check,
                                                                               method=self.deposit_method))
            return self._convolution.grid.interpolate(self._convolution(masses), x, check=self.check)
        if self.backend == "keops":
            raise ValueError("backend: 'keops' cannot be sharded; use 'grid' (or 'pairwise') with sharded=True")
        return self._pairwise(x, distributed.gather_sources(y), distributed.gather_sources(weights, dim=-1))

    def _quadratic(self, x, y, weights):
        # grad(c|x|^2) is linear, so the sum collapses to the weighted mean of the sources: O(N), exact.
        if weights is None:
            mean = ordered_sum(y, -2) / y.shape[-2]
        else:
            mean = ordered_sum(weights.unsqueeze(-1) * y, -2)
        total = 1.0 if weights is None else ordered_sum(weights, -1).unsqueeze(-1)
        return 2 * self.potential.coefficient * (x * total - mean)

    def _grid(self, x, y, weights):
        convolution = self._convolution
        if convolution is None:
            grid = Grid.covering(torch.cat([x, y], dim=-2), self.grid_shape or _default_shape(x.shape[-1]))
            convolution = GridConvolution(grid, self.potential._gradient_unchecked)
        masses = convolution.grid.deposit(y, weights, check=self.check, method=self.deposit_method)
        field = convolution(masses)  # (..., *shape, d)
        return convolution.grid.interpolate(field, x, check=self.check)

    def _keops(self, x, y, weights):
        if not self.potential.keops_compatible:
            raise ValueError(
                f"backend: 'keops' needs a potential written with LazyTensor operations; "
                f"{type(self.potential).__name__} is not (use 'pairwise' or 'grid')"
            )
        try:
            from pykeops.torch import LazyTensor
        except ImportError:
            raise ValueError("backend: 'keops' needs pykeops (pip install 'torchmf[keops]')") from None
        if weights is None:
            weights = y.new_full(y.shape[:-1], 1.0 / y.shape[-2])
        queries = LazyTensor(x.unsqueeze(-2).contiguous())
        sources = LazyTensor(y.unsqueeze(-3).contiguous())
        source_weights = LazyTensor(weights.unsqueeze(-2).unsqueeze(-1).contiguous())
        difference = queries - sources
        squared = (difference ** 2).sum(-1)
        # r_safe = r where r > 0 and 1 at r = 0, where the difference vanishes anyway.
        r_safe = squared.sqrt() + (-squared).step()
        scale = self.potential.profile_derivative(r_safe) / r_safe
        return (scale * source_weights * difference).sum(dim=x.ndim - 1)


#: Block length of :func:`ordered_sum`: blocks are summed by one thread each, whatever the thread count.
_SUM_BLOCK = 1024


def ordered_sum(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values.sum(dim, keepdim=True)`` in an order that does not depend on the number of threads.

    torch splits a long reduction over threads, so the float rounding (and the bytes of a run)
    changed with ``torch.set_num_threads``. Here the axis is cut into fixed blocks of
    ``_SUM_BLOCK`` entries (zero-padded), each block is summed whole, then the block sums: the
    same additions in the same order on 1 or 16 threads (the block sums stay below torch's
    parallel grain for up to ~3e7 entries).
    """
    dim = dim % values.ndim
    length = values.shape[dim]
    if length <= _SUM_BLOCK:
        return values.sum(dim, keepdim=True)
    blocks = -(-length // _SUM_BLOCK)
    moved = values.movedim(dim, -1)
    padded = torch.nn.functional.pad(moved, (0, blocks * _SUM_BLOCK - length))
    partial = padded.reshape(*moved.shape[:-1], blocks, _SUM_BLOCK).sum(-1)
    return partial.sum(-1, keepdim=True).movedim(-1, dim)


def interaction_force(x: torch.Tensor, y: Optional[torch.Tensor], potential, backend: str = "auto",
                      weights: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """Functional form of :class:`InteractionForce`: ``(..., Nq, d)`` force at ``x`` from ``y``."""
    return InteractionForce(potential, backend=backend, **options)(x, y, weights)


def _default_shape(dim: int) -> int:
    return {1: 2048, 2: 256}.get(dim, 64)
