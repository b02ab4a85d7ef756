r"""The identified mean-field model :class:`WSINDyModel`.

Sign convention of eq. (1.1): :math:`dX = (-\nabla K * \mu - \nabla V)\,dt + \sigma\,dB`, with
:math:`K = \sum_j w_j K_j`, :math:`\nabla V = \sum_j w_j \nabla V_j` and
:math:`\tfrac12\sigma\sigma^T = D = \sum_j w_j D_j` (diagonal). The mean-field PDE is

.. math:: \partial_t u = \nabla\cdot(u\,\nabla K * u) + \nabla\cdot(u\,\nabla V) + \sum_i \partial_{ii}(D_{ii} u).

A part that was not selected is zero. :meth:`WSINDyModel.sigma` is :math:`\sqrt{2 D_{ii}}`; where the
identified :math:`D` is negative (it can be, away from the data) it returns 0 there, which is
what :meth:`simulate` integrates (documented, not silent: :meth:`diffusion` gives the raw values).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import torch

from ..data.files import write_json
from .._validation import check_points, check_positive
from ..grid import Grid
from ..kernels import RadialKernel
from .library import Library

__all__ = ["WSINDyModel", "CombinedPotential"]


class CombinedPotential(RadialKernel):
    """:math:`K = \\sum_j w_j K_j` over radial interaction terms, usable by :class:`~torchmf.interaction.InteractionForce`."""

    def __init__(self, terms, weights):
        self.terms = list(terms)
        self.weights = [float(w) for w in weights]

    def profile(self, r):
        total = torch.zeros_like(r)
        for term, weight in zip(self.terms, self.weights):
            total = total + weight * term.potential.profile(r)
        return total

    def profile_derivative(self, r):
        total = torch.zeros_like(r)
        for term, weight in zip(self.terms, self.weights):
            total = total + weight * term.potential.profile_derivative(r)
        return total


class WSINDyModel:
    """Coefficients of a :class:`~torchmf.wsindy.library.Library` found by :func:`torchmf.wsindy.identify`.

    Arguments:
        library: the library (``J`` terms, dimension ``d``).
        coefficients: ``(J,)``; zeros are terms not selected.
        grid: the computational grid C (used for scores and bounds of re-simulation), optional.
        info: diagnostics (threshold, condition number, sizes, timings).
    """

    def __init__(self, library: Library, coefficients, grid: Optional[Grid] = None, info: Optional[dict] = None):
        if not isinstance(library, Library):
            raise TypeError(f"library: expected a torchmf.wsindy.Library, but got {type(library).__name__}")
        coefficients = torch.as_tensor(coefficients, dtype=torch.float64).reshape(-1)
        if coefficients.numel() != len(library):
            raise ValueError(f"coefficients: expected {len(library)} entries (one per term), but got {coefficients.numel()}")
        self.library = library
        self.coefficients = coefficients
        self.grid = grid
        self.info = dict(info or {})

    # -- terms ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.library.dim

    @property
    def selected(self) -> Dict[str, float]:
        """Selected terms: name -> coefficient (nonzero only)."""
        return {t.name: float(c) for t, c in zip(self.library.terms, self.coefficients) if float(c) != 0.0}

    def _active(self, kind: str):
        return [(self.library.terms[i], float(self.coefficients[i])) for i in self.library.of_kind(kind)
                if float(self.coefficients[i]) != 0.0]

    def potential(self) -> CombinedPotential:
        """The identified interaction potential as a radial kernel."""
        active = self._active("interaction")
        return CombinedPotential([t for t, _ in active], [w for _, w in active])

    # -- callables (torch, any device; x (..., d)) ---------------------------------------------------------
    def _check(self, x):
        return check_points("x", x.unsqueeze(-2) if x.ndim == 1 else x, self.dim).reshape(x.shape)

    def grad_K(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla K(x)`, ``(..., d) -> (..., d)`` (0 where no interaction was selected)."""
        x = self._check(x)
        total = torch.zeros_like(x)
        for term, weight in self._active("interaction"):
            total = total + weight * term.gradient(x)
        return total

    def grad_V(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla V(x)`, ``(..., d) -> (..., d)``."""
        x = self._check(x)
        total = torch.zeros_like(x)
        for term, weight in self._active("local"):
            total = total + weight * term.gradient(x)
        return total

    def diffusion(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal of :math:`D = \\tfrac12\\sigma\\sigma^T`, ``(..., d) -> (..., d)`` (raw, may be negative)."""
        x = self._check(x)
        total = torch.zeros_like(x)
        for term, weight in self._active("diffusion"):
            total = total + weight * term.diagonal(x)
        return total

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusivity :math:`\\sigma(x) = \\sqrt{2 \\max(D_{ii}(x), 0)}`, ``(..., d) -> (..., d)``."""
        return torch.sqrt(2 * torch.clamp(self.diffusion(x), min=0))

    # -- text and serialisation ---------------------------------------------------------------------------------
    def equation(self, digits: int = 4) -> str:
        """Readable mean-field equation with the identified K, grad V and D."""
        def combination(kind: str, strip: str) -> str:
            parts = []
            for term, weight in self._active(kind):
                label = term.name.split(":", 1)[1]
                parts.append(f"{weight:+.{digits}g}*{label}")
            return " ".join(parts).lstrip("+") if parts else "0"

        lines = ["u_t = div(u grad(K * u)) + div(u grad V) + sum_i d_ii(D_ii u)"]
        lines.append(f"  K(x) = {combination('interaction', 'K')}")
        local = self._active("local")
        if any(term.axis is not None for term, _ in local):
            for axis in range(self.dim):
                parts = [f"{w:+.{digits}g}*{t.name.split(':', 1)[1]}" for t, w in local if t.axis in (axis,)
                         or (t.axis is None and self.dim == 1)]
                pot = [f"{w:+.{digits}g}*d/dx{axis + 1}[{t.name.split(':', 1)[1]}]" for t, w in local
                       if t.axis is None and self.dim > 1]
                text = " ".join(parts + pot).lstrip("+") or "0"
                lines.append(f"  dV/dx{axis + 1}(x) = {text}")
        else:
            lines.append(f"  V(x) = {combination('local', 'V')}")
        diffusion = self._active("diffusion")
        if diffusion and any(term.axis is not None for term, _ in diffusion):
            for axis in range(self.dim):
                parts = [f"{w:+.{digits}g}*{t.name.split(':', 1)[1]}" for t, w in diffusion if axis in t.axes]
                lines.append(f"  D{axis + 1}{axis + 1}(x) = {' '.join(parts).lstrip('+') or '0'}")
        else:
            lines.append(f"  D(x) = {combination('diffusion', 'D')}   (D = sigma^2 / 2, isotropic)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"WSINDyModel(d={self.dim}, library={self.library.name!r}, selected={self.selected})"

    def to_dict(self) -> dict:
        """JSON-serialisable description (round-trips through :meth:`from_dict`)."""
        grid = None
        if self.grid is not None:
            grid = {"lower": list(self.grid.lower), "upper": list(self.grid.upper), "shape": list(self.grid.shape)}
        out = {"format": "torchmf.wsindy_model", "version": 1, "dim": self.dim, "library_name": self.library.name,
               "library": self.library.spec(), "terms": self.library.names,
               "coefficients": self.coefficients.tolist(), "selected": self.selected, "equation": self.equation(),
               "grid": grid, "info": _jsonable(self.info)}
        for key in ("reliable", "reasons", "inclusion_probabilities"):  # the verdict, at the top level
            if key in self.info:
                out[key] = _jsonable(self.info[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "WSINDyModel":
        if not isinstance(data, dict) or data.get("format") != "torchmf.wsindy_model":
            raise ValueError("data: expected a dictionary written by WSINDyModel.to_dict()")
        library = Library.from_spec(data["library"], data["dim"], name=data.get("library_name", "custom"))
        grid = data.get("grid")
        grid = Grid(grid["lower"], grid["upper"], grid["shape"]) if grid else None
        return cls(library, data["coefficients"], grid, data.get("info"))

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "WSINDyModel":
        with open(path) as handle:
            return cls.from_dict(json.load(handle))

    # -- re-simulation --------------------------------------------------------------------------------------------
    def sde(self, n_experiments: int = 1, backend: str = "dense"):
        """A :class:`~torchmf.sde.McKeanVlasovSDE` integrating the identified model.

        ``backend``: ``"dense"`` (exact, blocked broadcasting in this module; the mean-field force is
        passed through the SDE's external-force slot) or an :class:`~torchmf.interaction.InteractionForce`
        backend (``"pairwise"``, ``"grid"``, ``"auto"``)."""
        from ..interaction import InteractionForce
        from ..sde import McKeanVlasovSDE

        interaction = None
        potential = self.potential()
        local = self._active("local")
        if self._active("interaction") and backend != "dense":
            interaction = InteractionForce(potential, backend=backend)

        def external(x):
            total = -self.grad_V(x) if local else torch.zeros_like(x)
            if self._active("interaction") and backend == "dense":
                total = total - dense_interaction(potential, x)
            return total

        diffusion = self.sigma if self._active("diffusion") else 0.0
        return McKeanVlasovSDE(self.dim, external_force=external, interaction=interaction, diffusion=diffusion,
                               n_experiments=n_experiments)

    def simulate(self, x0: torch.Tensor, times, dt: float, seed: Optional[int] = 0, backend: str = "grid",
                 progress: bool = True):
        """Integrate the identified model with :func:`torchmf.sde.simulate` from ``x0`` ``(M, N, d)``.

        ``backend``: ``"grid"`` (default: deposit + FFT + interpolation, :math:`O(N + G \\log G)` per
        step; N = 3,000 in 2-D takes about 0.05 s a step on one thread, see
        ``scripts/bench_wsindy_simulate.py``), ``"dense"`` (exact :math:`O(N^2)` sums, the reference;
        about 15x slower at N = 3,000) or any :class:`~torchmf.interaction.InteractionForce` backend.
        The progress bar shows the estimated remaining time (``progress=False`` hides it).

        Returns :class:`~torchmf.data.Trajectories` ``(M, L, N, d)``; compare with the data by
        :func:`torchmf.metrics.w2` at matching times.
        """
        from ..sde import simulate

        x0 = check_points("x0", x0, self.dim)
        if x0.ndim == 2:
            x0 = x0.unsqueeze(0)
        check_positive("dt", dt)
        sde = self.sde(n_experiments=x0.shape[0], backend=backend)
        return simulate(sde, x0, times, dt, seed=seed, progress=progress,
                        meta={"model": "wsindy", "selected": self.selected})


def dense_interaction(potential: RadialKernel, x: torch.Tensor, block: int = 512) -> torch.Tensor:
    """Exact :math:`(\\nabla K * \\mu^N)(x_i)` for ``x (..., N, d)`` by blocked broadcasting (memory ``O(block N d)``)."""
    pieces = []
    for start in range(0, x.shape[-2], block):
        difference = x[..., start:start + block, :].unsqueeze(-2) - x.unsqueeze(-3)  # (..., B, N, d)
        # |.| directly: a norm over a size-1 axis is a slow reduction in torch on CPU
        r = difference.squeeze(-1).abs() if x.shape[-1] == 1 else difference.pow(2).sum(-1).sqrt()
        safe = torch.where(r > 0, r, torch.ones_like(r))
        scale = torch.where(r > 0, potential.profile_derivative(safe) / safe, torch.zeros_like(r))
        pieces.append((scale.unsqueeze(-1) * difference).mean(-2))
    return torch.cat(pieces, dim=-2)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value
