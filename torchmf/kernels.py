r"""Smoothing kernels and interaction potentials, each with its gradient.

Every kernel here is radial, :math:`K(x) = k(|x|)`, so one base class, :class:`RadialKernel`,
turns the profile :math:`k(r)` and its derivative :math:`k'(r)` into values and gradients
:math:`\nabla K(x) = k'(|x|)\, x / |x|`. The convention :math:`\nabla K(0) = 0` holds for all of
them (it is what makes the self-interaction of a particle vanish, and it is the symmetric choice
for kernels whose gradient jumps at the origin).

Shapes: ``value(x)`` maps ``(..., d) -> (...)`` and ``gradient(x)`` maps ``(..., d) -> (..., d)``.

Provided:

- :class:`GaussianKernel` -- normalized :math:`(2\pi h^2)^{-d/2} e^{-|x|^2 / 2h^2}` (smoothing, nudging).
- :class:`PeriodicKernel` -- any radial kernel summed over the images of a box torus.
- :class:`PowerPotential` -- :math:`c|x|^m`.
- :class:`QANRPotential` -- quadratic attraction / Newtonian repulsion :math:`\tfrac12|x|^2 - |x|`.
- :class:`LogPotential` -- :math:`\tfrac{1}{2\pi}\log|x|` with the linear cutoff below
  :math:`\delta` of eq. (5.6) in the WSINDy paper (Lipschitz; gradient jumps at 0).
- :class:`MorsePotential` -- :math:`C_r e^{-|x|/\ell_r} - C_a e^{-|x|/\ell_a}`.
"""
from __future__ import annotations

import itertools
import math
import torch

from ._validation import as_float_tensor, check_int, check_positive, check_tensor

__all__ = [
    "RadialKernel",
    "GaussianKernel",
    "PeriodicKernel",
    "PowerPotential",
    "QANRPotential",
    "LogPotential",
    "MorsePotential",
    "potential_from_spec",
]


class RadialKernel:
    """Base class: subclasses define ``profile(r)`` and ``profile_derivative(r)`` for ``r >= 0``."""

    #: True where the profile is written with operations pykeops LazyTensors support too.
    keops_compatible = False

    def profile(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def profile_derivative(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`K(x)`, ``(..., d) -> (...)``."""
        x = check_tensor("x", x, min_ndim=1)
        return self.profile(x.norm(dim=-1))

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla K(x)`, ``(..., d) -> (..., d)``, with :math:`\\nabla K(0) = 0`."""
        x = check_tensor("x", x, min_ndim=1)
        return self._gradient_unchecked(x)

    def _gradient_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        # Hot path of the pairwise backend: no validation, no host synchronisation.
        r = x.norm(dim=-1, keepdim=True)
        safe_r = torch.where(r > 0, r, torch.ones_like(r))
        scale = torch.where(r > 0, self.profile_derivative(safe_r) / safe_r, torch.zeros_like(r))
        return scale * x

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class GaussianKernel(RadialKernel):
    r"""Normalized Gaussian :math:`K_h(x) = (2\pi h^2)^{-d/2} \exp(-|x|^2 / (2h^2))` on :math:`\mathbb{R}^d`.

    Arguments:
        bandwidth: :math:`h > 0`.
        dim: dimension ``d`` (sets the normalization).
    """

    keops_compatible = True

    def __init__(self, bandwidth: float, dim: int = 1):
        self.bandwidth = check_positive("bandwidth", bandwidth)
        self.dim = check_int("dim", dim, minimum=1)

    @property
    def normalization(self) -> float:
        return (2 * math.pi * self.bandwidth**2) ** (-self.dim / 2)

    def profile(self, r):
        return self.normalization * (-(r * r) / (2 * self.bandwidth**2)).exp()

    def profile_derivative(self, r):
        return -r / self.bandwidth**2 * self.profile(r)


class PeriodicKernel(RadialKernel):
    r"""A radial kernel periodized on the box torus :math:`\prod_i [0, L_i)`.

    :math:`K^{per}(x) = \sum_{n \in \mathbb{Z}^d,\ |n_i| \le n_{img}} K(x + n \odot L)`, evaluated at
    the minimum-image displacement. Suited to kernels that decay within a few box lengths
    (Gaussians with bandwidth below the box size); ``images`` sets how many copies are summed
    on each side.

    Arguments:
        kernel: the radial kernel to periodize.
        box: box lengths :math:`L`, a number or a sequence of ``d`` numbers.
        images: number of neighbouring copies on each side (default 1).
    """

    def __init__(self, kernel: RadialKernel, box, images: int = 1):
        if not isinstance(kernel, RadialKernel):
            raise TypeError(f"kernel: expected a RadialKernel, but got {type(kernel).__name__}")
        self.kernel = kernel
        self.box = as_float_tensor("box", box, like=torch.zeros((), dtype=torch.float64))
        if not bool((self.box > 0).all()):
            raise ValueError(f"box: expected positive lengths, but got {self.box.tolist()}")
        self.images = check_int("images", images, minimum=0)

    def _shifts(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        box = self.box.to(device=x.device, dtype=x.dtype).expand(dim)
        offsets = list(itertools.product(range(-self.images, self.images + 1), repeat=dim))
        return torch.tensor(offsets, device=x.device, dtype=x.dtype) * box

    def _minimum_image(self, x: torch.Tensor) -> torch.Tensor:
        box = self.box.to(device=x.device, dtype=x.dtype).expand(x.shape[-1])
        return x - box * torch.round(x / box)

    def value(self, x):
        x = self._minimum_image(check_tensor("x", x, min_ndim=1))
        shifted = x.unsqueeze(-2) + self._shifts(x)
        return self.kernel.profile(shifted.norm(dim=-1)).sum(-1)

    def _gradient_unchecked(self, x):
        x = self._minimum_image(x)
        shifted = x.unsqueeze(-2) + self._shifts(x)
        return self.kernel._gradient_unchecked(shifted).sum(-2)


class PowerPotential(RadialKernel):
    r""":math:`K(x) = c\,|x|^m` with gradient :math:`c\,m\,|x|^{m-2} x` (0 at the origin).

    Arguments:
        exponent: :math:`m > 0`.
        coefficient: :math:`c` (default 1).
    """

    keops_compatible = True

    def __init__(self, exponent: float, coefficient: float = 1.0):
        self.exponent = check_positive("exponent", exponent)
        self.coefficient = float(coefficient)

    def profile(self, r):
        return self.coefficient * r**self.exponent

    def profile_derivative(self, r):
        return self.coefficient * self.exponent * r ** (self.exponent - 1)


class QANRPotential(RadialKernel):
    r"""Quadratic attraction / Newtonian repulsion :math:`K(x) = \tfrac12 |x|^2 - |x|`.

    :math:`\nabla K(x) = x - x/|x|` (in 1-D, :math:`x - \mathrm{sign}(x)`), 0 at the origin.
    """

    def profile(self, r):
        return 0.5 * r * r - r

    def profile_derivative(self, r):
        return r - 1.0


class LogPotential(RadialKernel):
    r"""Logarithmic potential with a linear cutoff (WSINDy paper, eq. 5.6):

    .. math::
        K_\delta(x) = \frac{1}{2\pi}\begin{cases} \log\delta - 1 + |x|/\delta, & |x| < \delta\\
        \log|x|, & |x| \ge \delta\end{cases}

    Lipschitz; :math:`\nabla K_\delta` has magnitude :math:`1/(2\pi\delta)` inside the cutoff and
    :math:`1/(2\pi|x|)` outside, and jumps at the origin (set to 0 there).

    Arguments:
        cutoff: :math:`\delta > 0` (default 0.01, as in the paper).
        coefficient: overall factor (default :math:`1/(2\pi)`, the 2-D Green's function).
    """

    def __init__(self, cutoff: float = 0.01, coefficient: float = 1.0 / (2.0 * math.pi)):
        self.cutoff = check_positive("cutoff", cutoff)
        self.coefficient = float(coefficient)

    def profile(self, r):
        delta = self.cutoff
        inside = math.log(delta) - 1.0 + r / delta
        outside = torch.log(torch.clamp(r, min=delta))  # clamp only guards log(0) in the unused branch
        return self.coefficient * torch.where(r < delta, inside, outside)

    def profile_derivative(self, r):
        delta = self.cutoff
        return self.coefficient * torch.where(r < delta, torch.full_like(r, 1.0 / delta), 1.0 / torch.clamp(r, min=delta))


class MorsePotential(RadialKernel):
    r"""Morse attraction-repulsion :math:`K(x) = C_r e^{-|x|/\ell_r} - C_a e^{-|x|/\ell_a}`.

    Arguments:
        attraction_strength: :math:`C_a \ge 0`.
        attraction_length: :math:`\ell_a > 0`.
        repulsion_strength: :math:`C_r \ge 0`.
        repulsion_length: :math:`\ell_r > 0`.
    """

    keops_compatible = True

    def __init__(self, attraction_strength=1.0, attraction_length=1.0, repulsion_strength=0.5, repulsion_length=0.5):
        self.attraction_strength = float(attraction_strength)
        self.attraction_length = check_positive("attraction_length", attraction_length)
        self.repulsion_strength = float(repulsion_strength)
        self.repulsion_length = check_positive("repulsion_length", repulsion_length)

    def profile(self, r):
        return self.repulsion_strength * (-r / self.repulsion_length).exp() - self.attraction_strength * (
            -r / self.attraction_length
        ).exp()

    def profile_derivative(self, r):
        return (
            -self.repulsion_strength / self.repulsion_length * (-r / self.repulsion_length).exp()
            + self.attraction_strength / self.attraction_length * (-r / self.attraction_length).exp()
        )


_POTENTIALS = {
    "gaussian": GaussianKernel,
    "power": PowerPotential,
    "qanr": QANRPotential,
    "log": LogPotential,
    "morse": MorsePotential,
}


def potential_from_spec(spec) -> RadialKernel:
    """Build a potential from a kernel object, a name, or ``{"name": ..., **params}`` (YAML recipes)."""
    if isinstance(spec, RadialKernel):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TypeError(f"potential: expected a RadialKernel, a name or a dict with 'name', but got {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    if name not in _POTENTIALS:
        raise ValueError(f"potential: expected a name in {sorted(_POTENTIALS)}, but got {name!r}")
    return _POTENTIALS[name](**params)

