"""geomloss' Sinkhorn (tensorized or KeOps) as a transport-map backend."""
from __future__ import annotations

import torch

from .kernels import DenseKernel, centred, uniform_log

__all__ = ["geomloss_map"]


def geomloss_map(x, y, blur, scaling, backend, tiling=(None, None)):
    """Barycentric map ``(N, d)`` from geomloss' dual potential ``g`` (``backend`` ``"tensorized"``
    or ``"keops"``: pykeops' multiscale backend in d <= 3, online beyond)."""
    from geomloss import SamplesLoss

    if backend == "keops":
        backend = "multiscale" if x.shape[-1] <= 3 else "online"
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, potentials=True, backend=backend)
    work_x, work_y, shift = centred(x, y)
    with torch.no_grad():
        _, g = loss(work_x.contiguous(), work_y.contiguous())
    eps = blur ** 2
    kernel = DenseKernel(work_x, work_y, tiling)
    return kernel.barycentre(eps, uniform_log(work_y) + g.reshape(-1) / eps, work_y) + shift
