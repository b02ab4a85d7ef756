r"""Trial-function libraries for WSINDy (interaction, local and diffusion terms).

A :class:`Library` is an ordered list of terms, one column of the weak system each. Three kinds
(the three parts of the mean-field equation, eq. (3.1) of the paper):

- :class:`InteractionTerm` -- a radial potential :math:`K_j`; its column is
  :math:`\langle \nabla\psi, U\,(\nabla K_j * U)\rangle` and the identified interaction
  potential is :math:`K = \sum_j w_j K_j`. Profiles: ``power`` (:math:`|x|^m`) and the cutoff
  potentials of eq. (5.6) ``cutoff_power`` (:math:`[|x|^a]_\delta`), ``cutoff_xlogx``
  (:math:`[|x|(\log|x| - 1)]_\delta`), ``cutoff_log`` (:math:`[\log|x|]_\delta`); ``exponential``
  (:math:`e^{-|x|/\ell}`, one Morse exponential), ``gaussian`` (:math:`e^{-|x|^2/(2\ell^2)}` normalised),
  ``hat`` and ``piecewise_linear`` (hats on equally spaced knots: a nonparametric :math:`K(r)`),
  ``hat_gradient`` and ``piecewise_linear_gradient`` (hats in :math:`K'(r)`: a smoother nonparametric K).
- :class:`LocalTerm` -- either a potential :math:`V_j` (``axis=None``; column
  :math:`\langle \nabla\psi, U\nabla V_j\rangle`) or the ``axis``-th component of
  :math:`\nabla V` (column :math:`\langle \partial_i\psi, U f_j\rangle`, Table 2's form).
- :class:`DiffusionTerm` -- a diffusion tensor :math:`D = \tfrac12\sigma\sigma^T` contribution
  :math:`f_j(x)\, I` (``axis=None``, isotropic, :math:`\Delta(U f_j)`) or
  :math:`f_j(x)\, e_i e_i^T` (``axis=i``, :math:`\partial_{ii}(U f_j)`); column
  :math:`-\langle \partial_{ii}\psi, U f_j\rangle` summed over the axes concerned.

Basis functions (:class:`Monomial` :math:`x^\alpha`, :class:`CosineProduct`
:math:`\prod_i\cos(k_i x_i)`) map ``(..., d) -> (...)`` with gradients ``(..., d)``.

Libraries come from a declarative spec (a Python dict or a YAML file, read with
``yaml.safe_load``)::

    interaction: [{type: power, exponent: 1}, {type: cutoff_log, cutoff: 0.01}]
    local:       [{type: monomial, powers: [0], axis: 0}, {type: monomial, powers: [1, 0]}]
    diffusion:   [{type: cosine, frequencies: [1, 1]}, {type: monomial, powers: [2], axis: 0}]

or from the named presets of :data:`PRESETS`: ``local_2d`` (Table 2), ``qanr_1d`` (Table 3),
``keller_segel_2d`` (Table 4) and ``default`` (a general library per dimension that contains all
the paper's models).
"""
from __future__ import annotations

import itertools
from builtins import range as builtins_range
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from .._validation import check_int, check_positive
from ..kernels import GaussianKernel, LogPotential, MorsePotential, PowerPotential, RadialKernel
from .basis import CosineProduct, Monomial, basis_from_spec, _number
from .hats import GradientHatPotential, HatPotential

__all__ = ["Monomial", "CosineProduct", "CutoffPotential", "InteractionTerm", "LocalTerm", "DiffusionTerm",
           "Library", "PRESETS", "load_library", "basis_from_spec"]


# -- basis functions -----------------------------------------------------------------------------
class CutoffPotential(RadialKernel):
    r"""A radial profile :math:`k(r)` continued linearly below :math:`\delta` as in eq. (5.6):
    :math:`[k]_\delta(r) = k(\delta) + k'(\delta)(r - \delta)` for :math:`r < \delta`.

    ``profile_name``: ``"power"`` (:math:`r^a`), ``"xlogx"`` (:math:`r(\log r - 1)`) or ``"log"``.
    """

    _PROFILES = {
        "power": (lambda r, a: r ** a, lambda r, a: a * r ** (a - 1)),
        "xlogx": (lambda r, a: r * (torch.log(r) - 1), lambda r, a: torch.log(r)),
        "log": (lambda r, a: torch.log(r), lambda r, a: 1.0 / r),
    }

    def __init__(self, profile_name: str, cutoff: float = 0.01, exponent: float = 0.5):
        if profile_name not in self._PROFILES:
            raise ValueError(f"profile_name: expected one of {sorted(self._PROFILES)}, but got {profile_name!r}")
        self.profile_name = profile_name
        self.cutoff = check_positive("cutoff", cutoff)
        self.exponent = float(exponent)

    def profile(self, r):
        value, derivative = self._PROFILES[self.profile_name]
        delta = torch.full_like(r, self.cutoff)
        outside = value(torch.clamp(r, min=self.cutoff), self.exponent)
        inside = value(delta, self.exponent) + derivative(delta, self.exponent) * (r - delta)
        return torch.where(r < self.cutoff, inside, outside)

    def profile_derivative(self, r):
        return self._PROFILES[self.profile_name][1](torch.clamp(r, min=self.cutoff), self.exponent)


# -- terms --------------------------------------------------------------------------------------------
class InteractionTerm:
    """One interaction potential :math:`K_j` (radial).

    Arguments:
        profile: ``"power"`` (needs ``exponent``), ``"cutoff_power"`` (``exponent``, ``cutoff``),
            ``"cutoff_xlogx"`` or ``"cutoff_log"`` (``cutoff``, default 0.01).
    """

    kind = "interaction"
    PROFILES = ("power", "cutoff_power", "cutoff_xlogx", "cutoff_log", "exponential", "gaussian", "hat", "hat_gradient")

    def __init__(self, profile: str = "power", exponent: Optional[float] = None, cutoff: float = 0.01,
                 length: Optional[float] = None, center: Optional[float] = None):
        if profile not in self.PROFILES:
            raise ValueError(f"library: expected an interaction type in {list(self.PROFILES)}, but got {profile!r}")
        self.profile = profile
        self.cutoff = check_positive("cutoff", cutoff)
        self.length = self.center = None
        if profile in ("exponential", "gaussian", "hat", "hat_gradient"):
            if length is None or (profile in ("hat", "hat_gradient") and center is None):
                needs = "'length' and 'center'" if profile in ("hat", "hat_gradient") else "a 'length'"
                raise ValueError(f"library: interaction type {profile!r} needs {needs}")
            self.length = check_positive("length", length)
            self.exponent = None
            if profile == "exponential":  # exp(-|x|/l): one exponential of the Morse family
                self.potential = MorsePotential(0.0, 1.0, 1.0, self.length)
            elif profile == "gaussian":  # exp(-|x|^2/(2 l^2)) up to its normalisation
                self.potential = GaussianKernel(self.length, 1)
            else:
                self.center = float(center)
                kernel = HatPotential if profile == "hat" else GradientHatPotential
                self.potential = kernel(self.center, self.length)
            return
        if profile in ("power", "cutoff_power"):
            if exponent is None:
                raise ValueError(f"library: interaction type {profile!r} needs an 'exponent'")
            self.exponent = check_positive("exponent", exponent)
        else:
            self.exponent = None
        if profile == "power":
            self.potential: RadialKernel = PowerPotential(self.exponent)
        elif profile == "cutoff_log":
            self.potential = LogPotential(self.cutoff, coefficient=1.0)
        else:
            self.potential = CutoffPotential("power" if profile == "cutoff_power" else "xlogx", self.cutoff,
                                             self.exponent if self.exponent is not None else 0.5)

    @property
    def name(self) -> str:
        if self.profile == "power":
            return f"K:|x|^{_number(self.exponent)}"
        if self.profile == "exponential":
            return f"K:exp(-|x|/{_number(self.length)})"
        if self.profile == "gaussian":
            return f"K:gauss(|x|/{_number(self.length)})"
        if self.profile in ("hat", "hat_gradient"):
            kind = "hat" if self.profile == "hat" else "hat'"
            return f"K:{kind}(|x|-{_number(self.center)};{_number(self.length)})"
        inner = {"cutoff_power": f"|x|^{_number(self.exponent or 0)}", "cutoff_xlogx": "|x|(log|x|-1)",
                 "cutoff_log": "log|x|"}[self.profile]
        return f"K:[{inner}]_{_number(self.cutoff)}"

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla K_j(x)`, ``(..., d) -> (..., d)`` (0 at the origin)."""
        return self.potential._gradient_unchecked(x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.potential.profile(x.norm(dim=-1))

    def spec(self) -> dict:
        spec = {"type": self.profile}
        if self.exponent is not None:
            spec["exponent"] = self.exponent
        if self.length is not None:
            spec["length"] = self.length
            if self.center is not None:
                spec["center"] = self.center
        elif self.profile != "power":
            spec["cutoff"] = self.cutoff
        return spec


def piecewise_linear_terms(knots: int = 12, range: float = None) -> List["InteractionTerm"]:  # noqa: A002
    """Hats on knots ``r_k = k h``, ``k = 0 .. knots - 2``, ``h = range / (knots - 1)``: together a piecewise-linear
    :math:`K(r)` on ``[0, range]`` with :math:`K(\text{range}) = 0` (K matters up to a constant only: a hat
    on the last knot would make the constant a null direction of G). The library's ``nonparametric`` terms."""
    return _knot_terms("hat", "piecewise_linear", "the data's extent", knots, range)


def piecewise_linear_gradient_terms(knots: int = 12, range: float = None) -> List["InteractionTerm"]:  # noqa: A002
    """Hats in :math:`K'(r)` on knots ``r_k = k h``, ``k = 0 .. knots - 2``, ``h = range / (knots - 1)``: a
    :math:`K` with a piecewise-linear :math:`K'` on ``[0, range]``, :math:`K' = K = 0` beyond. The smoother
    nonparametric K (``piecewise_linear_gradient``; measured in ``scripts/wsindy_suite_nonparametric.py``)."""
    return _knot_terms("hat_gradient", "piecewise_linear_gradient", "the 99% quantile of the pair distances",
                       knots, range)


def _knot_terms(kind, library_type, example, knots, range):  # noqa: A002
    """``knots - 1`` terms of ``kind`` on the knots ``0, h, 2h, ...``, ``h = range / (knots - 1)``."""
    knots = check_int("knots", knots, minimum=2)
    if range is None:
        raise ValueError(f"library: interaction type '{library_type}' needs a 'range' (the largest distance, "
                         f"e.g. {example})")
    step = check_positive("range", range) / (knots - 1)
    return [InteractionTerm(kind, length=step, center=k * step) for k in builtins_range(knots - 1)]


def _checked_axis(axis, dim: int) -> Optional[int]:
    """``None`` (all axes) or an axis index below ``dim``."""
    if axis is None:
        return None
    axis = check_int("axis", axis, minimum=0)
    if axis >= dim:
        raise ValueError(f"axis: expected an axis below d = {dim}, but got {axis}")
    return axis


class LocalTerm:
    """A local-force term: a potential :math:`V_j` (``axis=None``) or component ``axis`` of :math:`\\nabla V`."""

    kind = "local"

    def __init__(self, basis, axis: Optional[int] = None):
        self.basis = basis
        self.axis = _checked_axis(axis, basis.dim)

    @property
    def name(self) -> str:
        if self.axis is None and self.basis.dim > 1:
            return f"V:{self.basis.label()}"
        axis = 0 if self.axis is None else self.axis
        return f"dV/dx{axis + 1}:{self.basis.label()}"

    def pieces(self):
        """Weak-form pieces of the column: ``(sign, derivative of the basis or None, test-function space orders)``."""
        dim = self.basis.dim
        if self.axis is None:
            return [(1.0, i, _unit(dim, i, 1)) for i in range(dim)]
        return [(1.0, None, _unit(dim, self.axis, 1))]

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """Contribution to :math:`\\nabla V(x)`, ``(..., d) -> (..., d)``."""
        if self.axis is None:
            return self.basis.gradient(x)
        out = torch.zeros_like(x)
        out[..., self.axis] = self.basis.value(x)
        return out

    def spec(self) -> dict:
        spec = self.basis.spec()
        if self.axis is not None:
            spec["axis"] = self.axis
        return spec


class DiffusionTerm:
    """A diffusion-tensor term :math:`f_j(x) I` (``axis=None``) or :math:`f_j(x) e_i e_i^T` (``axis=i``)."""

    kind = "diffusion"

    def __init__(self, basis, axis: Optional[int] = None):
        self.basis = basis
        self.axis = _checked_axis(axis, basis.dim)

    @property
    def axes(self) -> List[int]:
        return list(range(self.basis.dim)) if self.axis is None else [self.axis]

    @property
    def name(self) -> str:
        if self.axis is None:
            return f"D:{self.basis.label()}"
        return f"D{self.axis + 1}{self.axis + 1}:{self.basis.label()}"

    def pieces(self):
        """Weak-form pieces: ``-<d_ii psi, U f>`` for each axis concerned."""
        return [(-1.0, None, _unit(self.basis.dim, i, 2)) for i in self.axes]

    def diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """Contribution to the diagonal of :math:`D = \\tfrac12\\sigma\\sigma^T`, ``(..., d) -> (..., d)``."""
        value = self.basis.value(x)
        out = torch.zeros_like(x)
        for axis in self.axes:
            out[..., axis] = value
        return out

    def spec(self) -> dict:
        spec = self.basis.spec()
        if self.axis is not None:
            spec["axis"] = self.axis
        return spec


# -- library ---------------------------------------------------------------------------------------------
class Library:
    """An ordered list of terms (interaction, then local, then diffusion) for data of dimension ``dim``.

    Raises ``ValueError`` for an empty library or duplicate terms (same name).
    """

    def __init__(self, terms: Iterable, dim: int, name: str = "custom"):
        self.dim = check_int("dim", dim, minimum=1)
        order = {"interaction": 0, "local": 1, "diffusion": 2}
        self.terms = sorted(list(terms), key=lambda term: order[term.kind])
        self.name = name
        if not self.terms:
            raise ValueError("library: expected at least one term, but the library is empty")
        names = [term.name for term in self.terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"library: duplicate terms {duplicates} (each would give the same column of G)")
        for term in self.terms:
            basis = getattr(term, "basis", None)
            if basis is not None and basis.dim != self.dim:
                raise ValueError(f"library: term {term.name} is {basis.dim}-D, but the data have d = {self.dim}")

    def __len__(self) -> int:
        return len(self.terms)

    def __iter__(self):
        return iter(self.terms)

    @property
    def names(self) -> List[str]:
        return [term.name for term in self.terms]

    def of_kind(self, kind: str) -> List[int]:
        return [i for i, term in enumerate(self.terms) if term.kind == kind]

    def nonparametric_names(self) -> List[str]:
        """Names of the hat terms (a piecewise-linear K or K'): selected together, never one by one."""
        return [t.name for t in self.terms if t.kind == "interaction" and t.profile in ("hat", "hat_gradient")]

    def constant_diffusion_names(self) -> List[str]:
        """Names of the diffusion terms with a constant basis function (:math:`x^0`, :math:`\\cos(0 x)`)."""
        def constant(basis):
            values = getattr(basis, "powers", None) or getattr(basis, "frequencies", ())
            return all(v == 0 for v in values)

        return [self.terms[i].name for i in self.of_kind("diffusion") if constant(self.terms[i].basis)]

    def spec(self) -> dict:
        """The declarative spec this library is built from (round-trips through :meth:`from_spec`)."""
        return {kind: [t.spec() for t in self.terms if t.kind == kind] for kind in ("interaction", "local", "diffusion")}

    @classmethod
    def from_spec(cls, spec: dict, dim: int, name: str = "custom") -> "Library":
        """Build from ``{"interaction": [...], "local": [...], "diffusion": [...]}`` (see the module doc)."""
        if not isinstance(spec, dict):
            raise TypeError(f"library: expected a mapping with keys interaction/local/diffusion, but got {type(spec).__name__}")
        unknown = set(spec) - {"interaction", "local", "diffusion", "name", "description"}
        if unknown:
            raise ValueError(f"library: unknown keys {sorted(unknown)}; expected interaction, local, diffusion")
        terms = []
        for entry in spec.get("interaction") or []:
            if not isinstance(entry, dict):
                raise TypeError(f"library: expected each interaction term to be a mapping, but got {entry!r}")
            entry = dict(entry)
            kind = entry.pop("type", "power")
            if kind in ("piecewise_linear", "piecewise_linear_gradient"):  # nonparametric K: hats in K or K'
                builder = piecewise_linear_terms if kind == "piecewise_linear" else piecewise_linear_gradient_terms
                unknown = sorted(set(entry) - {"knots", "range"})
                if unknown:
                    raise ValueError(f"library: unknown keys {unknown} of interaction type {kind!r}")
                terms.extend(builder(**entry))
                continue
            unknown = sorted(set(entry) - {"exponent", "cutoff", "length", "center"})
            if unknown:
                raise ValueError(f"library: unknown keys {unknown} of interaction type {kind!r}")
            terms.append(InteractionTerm(kind, **entry))
        for key, factory in (("local", LocalTerm), ("diffusion", DiffusionTerm)):
            for entry in spec.get(key) or []:
                if not isinstance(entry, dict):
                    raise TypeError(f"library: expected each {key} term to be a mapping, but got {entry!r}")
                terms.append(factory(basis_from_spec(entry, dim), entry.get("axis")))
        return cls(terms, dim, name=spec.get("name", name))

    def __repr__(self) -> str:
        return f"Library({self.name!r}, d={self.dim}, {len(self)} terms)"


# -- presets (paper, Appendix A) -----------------------------------------------------------------------
def _table2(dim: int) -> dict:
    """Local 2-D example (Table 2): K |x|^m m=1..7; dV/dx_i and D: cos(m x1)cos(n x2), m, n in 0..5."""
    _need(dim, 2, "local_2d")
    pairs = list(itertools.product(range(6), repeat=2))
    return {"interaction": [{"type": "power", "exponent": m} for m in range(1, 8)],
            "local": [{"type": "cosine", "frequencies": list(p), "axis": i} for p in pairs for i in range(2)],
            "diffusion": [{"type": "cosine", "frequencies": list(p)} for p in pairs]}


def _table3(dim: int) -> dict:
    """Nonlocal 1-D example (Table 3): K |x|^m m=1..7; V' = x^m m in {0,2..8}; D = x^m m = 0..8."""
    _need(dim, 1, "qanr_1d")
    return {"interaction": [{"type": "power", "exponent": m} for m in range(1, 8)],
            "local": [{"type": "monomial", "powers": [m], "axis": 0} for m in (0, 2, 3, 4, 5, 6, 7, 8)],
            "diffusion": [{"type": "monomial", "powers": [m]} for m in range(9)]}


def _table4_interaction() -> list:
    return ([{"type": "power", "exponent": m} for m in range(2, 7)]
            + [{"type": "cutoff_power", "exponent": 0.5, "cutoff": 0.01}, {"type": "cutoff_xlogx", "cutoff": 0.01},
               {"type": "cutoff_log", "cutoff": 0.01}])


def _table4(dim: int) -> dict:
    """Nonlocal 2-D example (Table 4): 8 interaction, 27 potential monomials, 18 diagonal diffusions."""
    _need(dim, 2, "keller_segel_2d")
    monomials = [[m, n] for total in range(1, 7) for m in range(total, -1, -1) for n in [total - m]]
    return {"interaction": _table4_interaction(),
            "local": [{"type": "monomial", "powers": p} for p in monomials],
            "diffusion": [{"type": "cosine", "frequencies": [m, n], "axis": i}
                          for m in range(3) for n in range(3) for i in range(2)]}


def _default(dim: int) -> dict:
    """General library: the paper's interaction terms (|x|^m, m = 1..7, and [log|x|]_0.01), local
    potential monomials and diffusion terms that contain the models of sections 5.1 (omega = 1),
    5.2 and 5.3 in their dimension. 1-D: Table 3 with the linear drift x^1 added (a linear
    confinement is the commonest one); 2-D: the constant diffusion per axis (D11, D22: anisotropic
    noise), the other cosine terms isotropic."""
    interaction = [{"type": "power", "exponent": m} for m in range(1, 8)] + [{"type": "cutoff_log", "cutoff": 0.01}]
    if dim == 1:
        spec = _table3(1)
        spec["interaction"] = interaction
        spec["local"] = [{"type": "monomial", "powers": [m], "axis": 0} for m in range(9)]
        return spec
    if dim == 2:
        monomials = [[m, total - m] for total in range(1, 5) for m in range(total, -1, -1)]
        constant = [{"type": "cosine", "frequencies": [0, 0], "axis": axis} for axis in range(2)]
        return {"interaction": interaction,
                "local": [{"type": "monomial", "powers": p} for p in monomials],
                "diffusion": constant + [{"type": "cosine", "frequencies": [m, n]} for m in range(3) for n in range(3)
                                         if (m, n) != (0, 0)]}
    unit = [0] * dim
    local = []
    for i in range(dim):
        for power in (1, 2):
            powers = list(unit)
            powers[i] = power
            local.append({"type": "monomial", "powers": powers})
    return {"interaction": interaction, "local": local, "diffusion": [{"type": "monomial", "powers": unit}]}


PRESETS = {"default": _default, "local_2d": _table2, "qanr_1d": _table3, "keller_segel_2d": _table4}


def _need(dim: int, expected: int, preset: str) -> None:
    if dim != expected:
        raise ValueError(f"library: preset {preset!r} is for d = {expected}, but the data have d = {dim}")


def load_library(library, dim: int) -> Library:
    """A :class:`Library` from a Library, a preset name, a spec dict, or a YAML file path."""
    if isinstance(library, Library):
        if library.dim != dim:
            raise ValueError(f"library: built for d = {library.dim}, but the data have d = {dim}")
        return library
    if library is None:
        library = "default"
    if isinstance(library, dict):
        return Library.from_spec(library, dim)
    if isinstance(library, (str, Path)):
        text = str(library)
        if text in PRESETS:
            return Library.from_spec(PRESETS[text](dim), dim, name=text)
        path = Path(text)
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            if not path.is_file():
                raise FileNotFoundError(f"library: no such file {text!r}")
            import yaml

            with open(path) as handle:
                spec = yaml.safe_load(handle)
            return Library.from_spec(spec, dim, name=path.stem)
        raise ValueError(f"library: expected a preset in {sorted(PRESETS)} or a .yaml/.json file, but got {text!r}")
    raise TypeError(f"library: expected a Library, preset name, dict or file path, but got {type(library).__name__}")


def _unit(dim: int, axis: int, order: int) -> tuple:
    orders = [0] * dim
    orders[axis] = order
    return tuple(orders)
