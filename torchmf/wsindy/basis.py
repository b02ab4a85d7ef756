r"""Basis functions of the WSINDy libraries: :class:`Monomial` :math:`x^\alpha` and
:class:`CosineProduct` :math:`\prod_i \cos(k_i x_i)`.

Each maps ``(..., d) -> (...)`` with gradients ``(..., d)``, factorises over the axes (the weak
system integrates them against separable test functions, :meth:`Monomial.factors`) and round-trips
through its declarative spec (:func:`basis_from_spec`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._validation import check_int

__all__ = ["Monomial", "CosineProduct", "basis_from_spec"]


class Monomial:
    """:math:`x^\\alpha = \\prod_i x_i^{\\alpha_i}`; ``powers`` are ``d`` non-negative integers."""

    def __init__(self, powers: Sequence[int]):
        self.powers = tuple(check_int("powers", p, minimum=0) for p in powers)
        if not self.powers:
            raise ValueError("powers: expected at least one exponent")

    @property
    def dim(self) -> int:
        return len(self.powers)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (...)``."""
        result = torch.ones_like(x[..., 0])
        for i, p in enumerate(self.powers):
            if p:
                result = result * x[..., i] ** p
        return result

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``."""
        parts = []
        for i, p in enumerate(self.powers):
            if p == 0:
                parts.append(torch.zeros_like(x[..., 0]))
                continue
            lowered = list(self.powers)
            lowered[i] -= 1
            parts.append(p * Monomial(lowered).value(x))
        return torch.stack(parts, dim=-1)

    def factors(self, axes: List[torch.Tensor], derivative: Optional[int] = None) -> List[torch.Tensor]:
        """1-D factors on grid axes ``axes`` (``d`` tensors ``(G_i,)``) whose product is the value
        (or the ``derivative``-th partial derivative): the functions are separable."""
        out = []
        for i, (x, p) in enumerate(zip(axes, self.powers)):
            if i == derivative:
                out.append(p * x ** (p - 1) if p else torch.zeros_like(x))
            else:
                out.append(x ** p)
        return out

    def label(self) -> str:
        if self.dim == 1:
            return f"x^{self.powers[0]}"
        return "*".join(f"x{i + 1}^{p}" for i, p in enumerate(self.powers))

    def spec(self) -> dict:
        return {"type": "monomial", "powers": list(self.powers)}


class CosineProduct:
    """:math:`\\prod_i \\cos(k_i x_i)`; ``frequencies`` are ``d`` numbers."""

    def __init__(self, frequencies: Sequence[float]):
        self.frequencies = tuple(float(k) for k in frequencies)
        if not self.frequencies:
            raise ValueError("frequencies: expected at least one frequency")

    @property
    def dim(self) -> int:
        return len(self.frequencies)

    def value(self, x):
        result = torch.ones_like(x[..., 0])
        for i, k in enumerate(self.frequencies):
            if k:
                result = result * torch.cos(k * x[..., i])
        return result

    def gradient(self, x):
        cosines = [torch.cos(k * x[..., i]) for i, k in enumerate(self.frequencies)]
        parts = []
        for i, k in enumerate(self.frequencies):
            part = -k * torch.sin(k * x[..., i])
            for j, c in enumerate(cosines):
                if j != i:
                    part = part * c
            parts.append(part)
        return torch.stack(parts, dim=-1)

    def factors(self, axes: List[torch.Tensor], derivative: Optional[int] = None) -> List[torch.Tensor]:
        """Separable 1-D factors of the value (or of its ``derivative``-th partial derivative)."""
        return [(-k * torch.sin(k * x)) if i == derivative else torch.cos(k * x)
                for i, (x, k) in enumerate(zip(axes, self.frequencies))]

    def label(self) -> str:
        return "*".join(f"cos({_number(k)}x{i + 1})" for i, k in enumerate(self.frequencies))

    def spec(self) -> dict:
        return {"type": "cosine", "frequencies": list(self.frequencies)}


def basis_from_spec(spec: dict, dim: int):
    """Build a :class:`Monomial` or :class:`CosineProduct` from ``{"type": ..., ...}``."""
    kind = spec.get("type")
    if kind == "monomial":
        basis = Monomial(spec.get("powers", []))
        size = basis.dim
    elif kind == "cosine":
        basis = CosineProduct(spec.get("frequencies", []))
        size = basis.dim
    else:
        raise ValueError(f"library: expected a basis type 'monomial' or 'cosine', but got {kind!r} in {spec}")
    if size != dim:
        raise ValueError(f"library: term {spec} has {size} exponents/frequencies, but the data have d = {dim}")
    return basis


# -- radial interaction potentials -----------------------------------------------------------------


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"
