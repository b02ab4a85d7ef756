r"""Held-out systems for WSINDy: models outside the paper's benchmarks, with their true terms.

They test selection where the paper's examples do not reach (issue 16): interactions of degree
above 2, confinements with a linear term, asymmetric initial data, anisotropic diffusion. Each
:class:`HeldOutSystem` simulates itself by Euler-Maruyama (explicit seed) and names its true
terms in the ``"default"`` library of its dimension (:mod:`.library`).

- ``cubic_tilted_well`` (1-D): :math:`K = |x|^3/3`, :math:`V' = x^3 - x + 0.3` (tilted double
  well), :math:`D = 0.05`; initial mixture :math:`0.3\,N(-1.2, 0.2^2) + 0.7\,N(0.8, 0.3^2)`.
- ``quartic_linear`` (1-D): :math:`K = -|x| + |x|^4/4` (short-range repulsion, quartic
  attraction), :math:`V' = 0.5\,x`, :math:`D = 0.02`; :math:`0.6\,N(0, 0.15^2) + 0.4\,N(2.5, 0.25^2)` (mean 1, relaxing to 0: a stationary mean would make
  :math:`|x|^2` and :math:`x` the same column).
- ``anisotropic_2d`` (2-D): no interaction, :math:`V = x_1^2/2 - x_1/2 + x_2^2`,
  :math:`D = \mathrm{diag}(0.1, 0.03)`; :math:`0.5\,N((-1, 0.5), 0.3^2 I) + 0.5\,N((1, -0.5), 0.2^2 I)`.

1-D interactions :math:`K = \sum_m c_m |x|^m` (integer ``m``) are summed exactly in
:math:`O(N \log N)`: after sorting, :math:`\sum_{j<i} (x_i - x_j)^{p}` expands binomially into
prefix sums of powers of :math:`x_j`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .._validation import check_int, check_positive
from ..data import Trajectories
from .scores import TrueModel

__all__ = ["HeldOutSystem", "HELD_OUT", "get_held_out", "polynomial_interaction_1d"]


def polynomial_interaction_1d(x: torch.Tensor, coefficients: Dict[int, float]) -> torch.Tensor:
    """:math:`(\\nabla K * \\mu^N)(x_i)` for ``x (B, N)`` and :math:`K = \\sum_m c_m |x|^m` (``{m: c_m}``, ``m >= 1``).

    Exact for distinct positions; two particles at the same position (probability zero for
    continuous data) count as ordered, so with ``m = 1`` their pair gives +-1 instead of 0."""
    order = torch.argsort(x, dim=-1)
    sorted_x = torch.gather(x, -1, order)
    n = x.shape[-1]
    degree = max(coefficients) - 1
    powers = [torch.ones_like(sorted_x)]
    for _ in range(degree):
        powers.append(powers[-1] * sorted_x)
    zero = torch.zeros_like(sorted_x[..., :1])
    prefix = [torch.cat((zero, torch.cumsum(p, -1)), -1) for p in powers]  # (B, N + 1): sums over j < i
    force = torch.zeros_like(sorted_x)
    for m, c in coefficients.items():
        p = m - 1  # grad |r|^m = m |r|^(m-1) sign(r)
        below = torch.zeros_like(sorted_x)
        above = torch.zeros_like(sorted_x)
        for k in range(p + 1):  # (x_i - x_j)^p = sum_k C(p, k) x_i^k (-x_j)^(p-k)
            factor = math.comb(p, k) * (-1) ** (p - k) * powers[k]
            below = below + factor * prefix[p - k][..., :-1]
            above = above + factor * (prefix[p - k][..., -1:] - prefix[p - k][..., 1:])
        force = force + c * m * (below - (-1) ** p * above) / n
    return torch.empty_like(force).scatter_(-1, order, force)


@dataclass
class HeldOutSystem:
    """A particle system with known mean-field terms.

    ``interaction``: ``{m: c_m}`` of :math:`K = \\sum c_m |x|^m` (1-D only); ``drift``: :math:`\\nabla V`,
    ``(..., d) -> (..., d)``; ``diffusion``: diagonal of :math:`D` (``d`` numbers); ``mixture``:
    ``(weight, mean (d,), std)`` components of the initial law; ``terms``: true weights by term name of
    the ``"default"`` library.
    """

    name: str
    dim: int
    interaction: Dict[int, float]
    drift: Callable[[torch.Tensor], torch.Tensor]
    diffusion: Sequence[float]
    mixture: List[Tuple[float, Sequence[float], float]]
    terms: Dict[str, float]
    extra: dict = field(default_factory=dict)

    def true_model(self) -> TrueModel:
        grad_k = None
        if self.interaction:
            def grad_k(x):
                return sum(c * m * x.abs() ** (m - 1) * torch.sign(x) for m, c in self.interaction.items())
        sigma = torch.tensor([math.sqrt(2 * d) for d in self.diffusion], dtype=torch.float64)
        return TrueModel(dict(self.terms), grad_K=grad_k, grad_V=self.drift,
                         sigma=lambda x: sigma.to(x).expand_as(x))

    def initial(self, count: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """``(count, d)`` samples of the initial mixture."""
        weights = torch.tensor([w for w, _, _ in self.mixture], dtype=torch.float64)
        component = torch.multinomial(weights, count, replacement=True, generator=generator)
        means = torch.tensor([list(m) for _, m, _ in self.mixture], dtype=dtype)
        stds = torch.tensor([s for _, _, s in self.mixture], dtype=dtype)
        noise = torch.randn(count, self.dim, generator=generator, dtype=dtype)
        return means[component] + stds[component].unsqueeze(-1) * noise

    def simulate(self, n_particles: int, n_experiments: int = 1, t_end: float = 2.0, record_every: float = 0.02,
                 dt: float = 2e-3, seed: int = 0, dtype=torch.float64) -> Trajectories:
        """Euler-Maruyama on ``[0, t_end]``, recorded every ``record_every``: ``(M, L, N, d)``."""
        n_particles = check_int("n_particles", n_particles, minimum=2)
        n_experiments = check_int("n_experiments", n_experiments, minimum=1)
        check_positive("dt", dt)
        steps_per_record = check_int("record_every / dt", round(record_every / dt), minimum=1)
        records = round(t_end / record_every)
        generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        x = self.initial(n_experiments * n_particles, generator, dtype).reshape(n_experiments, n_particles, self.dim)
        scale = torch.tensor([math.sqrt(2 * d * dt) for d in self.diffusion], dtype=dtype)
        frames = [x.clone()]
        for _ in range(records):
            for _ in range(steps_per_record):
                force = -self.drift(x)
                if self.interaction:
                    force = force - polynomial_interaction_1d(x[..., 0], self.interaction).unsqueeze(-1)
                x = x + force * dt + scale * torch.randn(x.shape, generator=generator, dtype=dtype)
            frames.append(x.clone())
        times = torch.arange(records + 1, dtype=torch.float64) * record_every
        return Trajectories(torch.stack(frames, 1), times, {"system": self.name, "seed": seed, "dt": dt})


def _cubic_tilted_well() -> HeldOutSystem:
    return HeldOutSystem(
        "cubic_tilted_well", 1, {3: 1 / 3}, lambda x: x ** 3 - x + 0.3, [0.05],
        [(0.3, [-1.2], 0.2), (0.7, [0.8], 0.3)],
        {"K:|x|^3": 1 / 3, "dV/dx1:x^0": 0.3, "dV/dx1:x^1": -1.0, "dV/dx1:x^3": 1.0, "D:x^0": 0.05})


def _quartic_linear() -> HeldOutSystem:
    return HeldOutSystem(
        "quartic_linear", 1, {1: -1.0, 4: 0.25}, lambda x: 0.5 * x, [0.02],
        [(0.6, [0.0], 0.15), (0.4, [2.5], 0.25)],
        {"K:|x|^1": -1.0, "K:|x|^4": 0.25, "dV/dx1:x^1": 0.5, "D:x^0": 0.02})


def _anisotropic_2d() -> HeldOutSystem:
    def drift(x):
        return torch.stack((x[..., 0] - 0.5, 2 * x[..., 1]), dim=-1)

    return HeldOutSystem(
        "anisotropic_2d", 2, {}, drift, [0.1, 0.03],
        [(0.5, [-1.0, 0.5], 0.3), (0.5, [1.0, -0.5], 0.2)],
        {"V:x1^1*x2^0": -0.5, "V:x1^2*x2^0": 0.5, "V:x1^0*x2^2": 1.0, "D11:cos(0x1)*cos(0x2)": 0.1,
         "D22:cos(0x1)*cos(0x2)": 0.03})


HELD_OUT = {"cubic_tilted_well": _cubic_tilted_well, "quartic_linear": _quartic_linear,
            "anisotropic_2d": _anisotropic_2d}


def get_held_out(name: str) -> HeldOutSystem:
    if name not in HELD_OUT:
        raise ValueError(f"name: expected one of {sorted(HELD_OUT)}, but got {name!r}")
    return HELD_OUT[name]()
