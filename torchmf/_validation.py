"""Argument checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, wrong
shape/range/value) with a message that names the argument, says what was expected and what was
received, so that the CLI can print it as a one-line error.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional, Sequence

import torch

__all__ = [
    "check_tensor",
    "check_points",
    "check_finite",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_choice",
    "check_seed",
    "parse_key_values",
    "as_float_tensor",
]


def check_tensor(
    name: str,
    value,
    *,
    ndim: Optional[int] = None,
    min_ndim: Optional[int] = None,
    last_dim: Optional[int] = None,
    floating: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of the expected rank/last dimension with finite entries."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, but got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, but got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name}: expected a tensor with {ndim} dimensions, but got shape {tuple(value.shape)}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected a tensor with at least {min_ndim} dimensions, but got shape {tuple(value.shape)}"
        )
    if last_dim is not None and (value.ndim == 0 or value.shape[-1] != last_dim):
        raise ValueError(f"{name}: expected last dimension {last_dim}, but got shape {tuple(value.shape)}")
    if finite:
        check_finite(name, value)
    return value


def check_points(name: str, value, dim: Optional[int] = None) -> torch.Tensor:
    """Particles of shape ``(..., N, d)`` with N >= 1 and finite floating entries."""
    value = check_tensor(name, value, min_ndim=2, last_dim=dim)
    if value.shape[-2] == 0:
        raise ValueError(f"{name}: expected at least one particle, but got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    if value.is_floating_point() or value.is_complex():
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name}: expected finite values, but found {bad} NaN/inf entries")
    return value


def _as_real(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number, but got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, but got {value}")
    return value


def check_positive(name: str, value) -> float:
    value = _as_real(name, value)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, but got {value}")
    return value


def check_nonnegative(name: str, value) -> float:
    value = _as_real(name, value)
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative number, but got {value}")
    return value


def check_int(name: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an integer, but got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, but got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer <= {maximum}, but got {value}")
    return value


#: torch seeds are unsigned 64-bit; keep them in the signed range every backend accepts
SEED_MAX = 2 ** 63 - 1


def check_seed(name: str, value) -> int:
    """A seed: an integer in ``[0, 2^63 - 1]``."""
    return check_int(name, value, minimum=0, maximum=SEED_MAX)


def parse_key_values(items: Sequence[str], option: str) -> dict:
    """``["a=0.5", "b=[1, 2]"]`` -> ``{"a": 0.5, "b": [1, 2]}``: each value read as safe YAML.

    Raises ``ValueError`` naming ``option`` and the item for a missing ``=``, an empty key or
    invalid YAML (python tags included: safe YAML builds no objects).
    """
    import yaml

    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option}: expected KEY=VALUE, but got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"{option}: expected a non-empty KEY in KEY=VALUE, but got {item!r}")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ValueError(f"{option}: {item!r} is not a valid YAML value ({problem})") from None
    return params


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, but got {value!r}")
    return value


def as_float_tensor(name: str, value, *, like: Optional[torch.Tensor] = None, shape=None) -> torch.Tensor:
    """Convert a number/sequence/tensor to a finite float tensor on the device/dtype of ``like``."""
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    try:
        tensor = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name}: expected a number or a sequence of numbers, but got {value!r}") from error
    check_finite(name, tensor)
    if shape is not None:
        try:
            tensor = tensor.expand(shape).clone()
        except RuntimeError as error:
            raise ValueError(f"{name}: expected shape broadcastable to {tuple(shape)}, but got {tuple(tensor.shape)}") from error
    return tensor
