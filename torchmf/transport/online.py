"""The online (tiled, KeOps-free) Sinkhorn backend: the dense kernel, never stored whole."""
from __future__ import annotations

import math

from .kernels import DenseKernel, uniform_log
from .multiscale import DENSE_LIMIT, coarse_start
from .sinkhorn import diameter, epsilon_schedule, sinkhorn_loop

__all__ = ["online_solve"]


def online_solve(x, y, eps, scaling, settings, previous=None, tiling=(None, None), a_log=None, b_log=None):
    """Dense tiled Sinkhorn between ``x (N, d)`` and ``y (M, d)``: ``(kernel, f, g, SinkhornReport)``.

    ``previous`` is a warm start ``(f, g)``: only the final level is run. Cold starts in d <= 3
    beyond ``DENSE_LIMIT`` points anneal the coarse scales on grid clusters (the multiscale
    backend's coarse stage, ``O(N)`` kernels) and only the levels below the cluster scale on the
    full tiles: about 3x fewer full soft-mins. ``a_log (N,)``, ``b_log (M,)``: log-weights of the
    two clouds (default uniform)."""
    kernel = DenseKernel(x, y, tiling)
    a_log = uniform_log(x) if a_log is None else a_log
    b_log = uniform_log(y) if b_log is None else b_log
    if previous is not None:
        f, g = previous
        f, g, report = sinkhorn_loop(kernel, a_log, b_log, [eps], settings, f, g)
        return kernel, f, g, report
    if x.shape[1] <= 3 and max(x.shape[0], y.shape[0]) > DENSE_LIMIT:
        f, g, _, cell, coarse, _ = coarse_start(x, y, eps, scaling, a_log, b_log, settings,
                                                   with_support=False)
        levels = epsilon_schedule(max(cell, math.sqrt(eps)), eps, scaling)[1:]
        f, g, report = sinkhorn_loop(kernel, a_log, b_log, levels, settings, f, g)
        return kernel, f, g, coarse + report
    f, g, report = sinkhorn_loop(kernel, a_log, b_log, epsilon_schedule(diameter(x, y), eps, scaling), settings)
    return kernel, f, g, report
