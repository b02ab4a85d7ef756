"""The learned reduced SDE :math:`dX = F(X)dt + \\sigma dW` (:class:`ReducedSDE`, simulated by
:func:`simulate_reduced` through torchsde) and the builder of pretrained averaged-dynamics models
(:func:`build_pretrained`, named ``"torchmf.averaging:build_pretrained"`` in the manifests)."""
from __future__ import annotations

from typing import Dict

import torch
import torchsde
from torch import nn

from .._validation import check_int, check_positive, check_tensor
from ..data import Trajectories
from .drift import FlowAveragedDrift, NeuralDrift
from .variational import VariationalAveragedDrift

__all__ = ["ReducedSDE", "simulate_reduced", "build_pretrained"]


class ReducedSDE(nn.Module):
    """The learned slow SDE :math:`dX = F(X)dt + \\sigma dW` for ``torchsde.sdeint`` (batch ``(M, d)``).

    The Monte-Carlo drift uses one fixed set of ``n_samples`` base-noise draws (common random
    numbers), so :math:`F` is a deterministic function along the simulation.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: nn.Module, n_samples: int = 256, seed: int = 0):
        super().__init__()
        self.model = model
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.seed = seed

    def f(self, t, y):
        if hasattr(self.model, "sample_fast"):
            generator = torch.Generator(device=y.device).manual_seed(self.seed)
            return self.model.drift(y, n_samples=self.n_samples, generator=generator)
        return self.model.drift(y)

    def g(self, t, y):
        return self.model.sigma.to(y).expand_as(y)


def simulate_reduced(model: nn.Module, x0: torch.Tensor, times, dt: float = 1e-2, seed: int = 0,
                     n_samples: int = 256) -> Trajectories:
    """Simulate the learned reduced SDE with torchsde (Euler-Maruyama).

    Arguments:
        model: a :class:`FlowAveragedDrift`, :class:`NeuralDrift` or a variational model (``drift``, ``sigma``).
        x0: initial slow states ``(M, d)`` (``M`` independent paths).
        times: increasing output times ``(L,)``.
        dt: integration step; seed: Brownian motion seed; n_samples: Monte-Carlo size of ``F``.

    Returns:
        :class:`~torchmf.data.Trajectories` ``(M, L, 1, d)``.
    """
    x0 = check_tensor("x0", x0, ndim=2)
    times = check_tensor("times", torch.as_tensor(times, dtype=x0.dtype, device=x0.device), ndim=1)
    if times.numel() < 2 or not bool((times.diff() > 0).all()):
        raise ValueError("times: expected at least two strictly increasing times")
    dt = check_positive("dt", dt)
    sde = ReducedSDE(model, n_samples, seed)
    brownian = torchsde.BrownianInterval(t0=float(times[0]), t1=float(times[-1]), size=tuple(x0.shape), dtype=x0.dtype,
                                         device=x0.device, entropy=seed)
    with torch.no_grad():
        path = torchsde.sdeint(sde, x0, times, bm=brownian, method="euler", dt=dt)  # (L, M, d)
    meta = {"model": type(model).__name__, "seed": seed, "dt": dt}
    return Trajectories(path.permute(1, 0, 2).unsqueeze(2), times, meta)


def build_pretrained(payload: Dict, manifest: Dict) -> nn.Module:
    """Builder for :mod:`torchmf.pretrained`: rebuild the model class named in the payload and load its weights."""
    classes = {"FlowAveragedDrift": FlowAveragedDrift, "NeuralDrift": NeuralDrift,
               "VariationalAveragedDrift": VariationalAveragedDrift}
    kind = payload.get("class") if isinstance(payload, dict) else None
    if kind not in classes or "state_dict" not in payload or "config" not in payload:
        raise ValueError(f"payload: expected an averaged-dynamics checkpoint with class in {sorted(classes)}, "
                         f"but got {kind!r}")
    model = classes[kind](**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model
