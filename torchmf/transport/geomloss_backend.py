"""geomloss' Sinkhorn (tensorized or KeOps) as a transport-map backend."""
from __future__ import annotations

import torch

from .kernels import DenseKernel, centred, uniform_log
from .sinkhorn import diameter as bounding_diameter

__all__ = ["geomloss_map"]


def geomloss_map(x, y, blur, scaling, backend, tiling=(None, None), a=None, b=None):
    """Barycentric map ``(N, d)`` from geomloss' dual potential ``g`` (``backend`` ``"tensorized"``
    or ``"keops"``: pykeops' multiscale backend in d <= 3, online beyond); ``a (N,)``, ``b (M,)``:
    probability weights of the two clouds (default uniform)."""
    from geomloss import SamplesLoss

    if backend == "keops":
        backend = "multiscale" if x.shape[-1] <= 3 else "online"
    work_x, work_y, shift = centred(x, y)
    # geomloss reads the diameter off the clouds: 0 for a point mass to itself (log 0, an error before)
    diameter = max(bounding_diameter(work_x, work_y), blur)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, diameter=diameter, scaling=scaling, debias=False,
                       potentials=True, backend=backend)
    with torch.no_grad():
        if a is None and b is None:
            _, g = loss(work_x.contiguous(), work_y.contiguous())
        else:
            a = torch.exp(uniform_log(work_x)) if a is None else a
            b = torch.exp(uniform_log(work_y)) if b is None else b
            _, g = loss(a, work_x.contiguous(), b, work_y.contiguous())
    eps = blur ** 2
    kernel = DenseKernel(work_x, work_y, tiling)
    b_log = uniform_log(work_y) if b is None else b.log()
    return kernel.barycentre(eps, b_log + g.reshape(-1) / eps, work_y) + shift
