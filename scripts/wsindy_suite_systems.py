r"""Held-out particle systems for WSINDy, simulated in plain numpy (no torchmf import): issue 23's suite.

Each system is :math:`dX_i = (-\frac1N\sum_j \nabla K(X_i - X_j) - \nabla V(X_i))\,dt + \sqrt{2 D(X_i)}\,dB_i`
(Ito, Euler-Maruyama, explicit seed), so that the mean-field equation is
:math:`\partial_t u = \nabla\cdot(u\,\nabla K * u) + \nabla\cdot(u\,\nabla V) + \sum_i \partial_{ii}(D_{ii} u)`,
the form and sign convention of ``torchmf.wsindy``. The true terms are named as in its ``"default"``
library of the dimension (``K:|x|^m``, ``dV/dx1:x^m`` / ``V:x1^a*x2^b``, ``D:x^m`` / ``D11:...``);
the Morse and Gaussian kernels are outside every polynomial library (their true terms name only
the local and diffusion parts).

Forces (each checked against the direct :math:`O(N^2)` sum by :func:`pairwise_force`):

- 1-D powers :math:`K = \sum_m c_m |x|^m`: exact in :math:`O(N \log N)` -- after sorting,
  :math:`\sum_{j<i}(x_i - x_j)^p` expands binomially into prefix sums of powers of :math:`x_j`.
- 1-D exponentials (Morse, :math:`K = \sum_k a_k e^{-|x|/\ell_k}`): exact in :math:`O(N\log N)`,
  :math:`\sum_{j<i} e^{-(x_i-x_j)/\ell} = e^{-(x_i-c)/\ell}\sum_{j<i} e^{(x_j-c)/\ell}` (prefix sums).
- 2-D even powers :math:`|x|^2/2` and :math:`|x|^4/4`: exact in :math:`O(N)` from the moments
  :math:`E[y]`, :math:`E[yy^T]`, :math:`E|y|^2`, :math:`E[|y|^2 y]` of the empirical measure.
- 1-D Gaussian :math:`K = -a\,e^{-x^2/(2s^2)}`: linear deposit on a 4,096-cell grid, FFT convolution,
  linear interpolation back (:math:`O(N + G\log G)`; error below 1e-5 of the force's scale).

Usage: ``simulate(name, n_particles, n_experiments, seed)`` returns ``(positions (M, L, N, d), times (L,))``;
``SYSTEMS[name]`` holds the description and the true terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SuiteSystem", "SYSTEMS", "simulate", "pairwise_force", "power_force_1d", "exponential_force_1d",
           "even_power_force_2d", "gaussian_force_1d", "POLYNOMIAL"]


# -- forces: (grad K * mu^N)(x_i) for x (B, N) in 1-D or (B, N, 2) in 2-D ------------------------------------
def power_force_1d(x: np.ndarray, coefficients: Dict[int, float]) -> np.ndarray:
    """Exact :math:`\\frac1N\\sum_j K'(x_i - x_j)` for :math:`K = \\sum_m c_m |x|^m`, ``x (B, N)``."""
    order = np.argsort(x, axis=-1)
    s = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    degree = max(coefficients) - 1
    powers = [np.ones_like(s)]
    for _ in range(degree):
        powers.append(powers[-1] * s)
    zero = np.zeros_like(s[..., :1])
    prefix = [np.concatenate((zero, np.cumsum(p, -1)), -1) for p in powers]  # sums over j < i
    force = np.zeros_like(s)
    for m, c in coefficients.items():
        p = m - 1  # d/dr |r|^m = m |r|^(m-1) sign(r)
        below = np.zeros_like(s)
        above = np.zeros_like(s)
        for k in range(p + 1):  # (x_i - x_j)^p = sum_k C(p, k) x_i^k (-x_j)^(p-k)
            factor = math.comb(p, k) * (-1) ** (p - k) * powers[k]
            below += factor * prefix[p - k][..., :-1]
            above += factor * (prefix[p - k][..., -1:] - prefix[p - k][..., 1:])
        force += c * m * (below - (-1) ** p * above) / n
    out = np.empty_like(force)
    np.put_along_axis(out, order, force, -1)
    return out


def exponential_force_1d(x: np.ndarray, terms: Sequence[Tuple[float, float]]) -> np.ndarray:
    """Exact :math:`\\frac1N\\sum_j K'(x_i - x_j)` for :math:`K = \\sum_k a_k e^{-|x|/\\ell_k}` (``(a, l)`` pairs)."""
    order = np.argsort(x, axis=-1)
    s = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    centre = 0.5 * (s[..., :1] + s[..., -1:])
    force = np.zeros_like(s)
    for a, length in terms:
        up = np.exp((s - centre) / length)
        down = np.exp(-(s - centre) / length)
        zero = np.zeros_like(s[..., :1])
        below = down * np.concatenate((zero, np.cumsum(up, -1)[..., :-1]), -1)  # sum_{j<i} e^{-(x_i - x_j)/l}
        reverse = np.cumsum(down[..., ::-1], -1)[..., ::-1]
        above = up * np.concatenate((reverse[..., 1:], zero), -1)  # sum_{j>i} e^{-(x_j - x_i)/l}
        # K'(r) = -(a/l) e^{-|r|/l} sign(r); r = x_i - x_j > 0 below, < 0 above
        force += -(a / length) * (below - above) / n
    out = np.empty_like(force)
    np.put_along_axis(out, order, force, -1)
    return out


def even_power_force_2d(x: np.ndarray, c2: float, c4: float) -> np.ndarray:
    """Exact :math:`\\frac1N\\sum_j \\nabla K(x_i - x_j)` for :math:`K = c_2|x|^2 + c_4|x|^4`, ``x (B, N, 2)``.

    :math:`\\nabla|r|^2 = 2r`, :math:`\\nabla|r|^4 = 4|r|^2 r`; with :math:`y` the other particles,
    :math:`E[|x-y|^2(x-y)] = |x|^2x - |x|^2m - 2x(x\\cdot m) + 2Sx + sx - t` (m = E y, S = E yy^T,
    s = E|y|^2, t = E|y|^2 y)."""
    m = x.mean(-2, keepdims=True)  # (B, 1, 2)
    second = np.einsum("bni,bnj->bij", x, x) / x.shape[-2]  # (B, 2, 2)
    squares = (x * x).sum(-1, keepdims=True)  # (B, N, 1)
    s = squares.mean(-2, keepdims=True)
    t = (squares * x).mean(-2, keepdims=True)
    cubic = (squares * x - squares * m - 2 * x * (x * m).sum(-1, keepdims=True)
             + 2 * np.einsum("bij,bnj->bni", second, x) + s * x - t)
    return 2 * c2 * (x - m) + 4 * c4 * cubic


def gaussian_force_1d(x: np.ndarray, amplitude: float, width: float, cells: int = 4096) -> np.ndarray:
    """:math:`\\frac1N\\sum_j K'(x_i - x_j)` for :math:`K = -a e^{-x^2/(2s^2)}` by linear deposit, FFT, interpolation."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        low, high = x[b].min() - 1e-9, x[b].max() + 1e-9
        h = (high - low) / (cells - 1)
        position = (x[b] - low) / h
        left = np.clip(np.floor(position).astype(np.int64), 0, cells - 2)
        frac = position - left
        mass = np.bincount(left, 1 - frac, cells) + np.bincount(left + 1, frac, cells)
        offsets = np.arange(-(cells - 1), cells) * h
        kernel = amplitude * offsets / width ** 2 * np.exp(-offsets ** 2 / (2 * width ** 2))  # K'(r)
        size = 1 << int(math.ceil(math.log2(3 * cells)))
        field_ = np.fft.irfft(np.fft.rfft(mass, size) * np.fft.rfft(kernel, size), size)[cells - 1:2 * cells - 1]
        field_ /= x.shape[-1]
        out[b] = field_[left] * (1 - frac) + field_[left + 1] * frac
    return out


def pairwise_force(x: np.ndarray, grad_k: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Reference :math:`\\frac1N\\sum_j \\nabla K(x_i - x_j)` by the direct O(N^2) sum; ``x (B, N)`` or ``(B, N, d)``."""
    if x.ndim == 2:
        r = x[..., :, None] - x[..., None, :]
        return grad_k(r).mean(-1)
    r = x[..., :, None, :] - x[..., None, :, :]
    return grad_k(r).mean(-2)


# -- systems -----------------------------------------------------------------------------------------------------
@dataclass
class SuiteSystem:
    """A system of the suite. ``force(x)``: interaction force; ``drift(x)``: :math:`\\nabla V`; ``diffusion(x)``:
    diagonal of :math:`D` (same shape as x); ``mixture``: ``(weight, mean, std)`` of the initial law;
    ``terms``: true coefficients by default-library name; ``grad_k``: :math:`\\nabla K` on offsets (None: no
    interaction); ``polynomial``: the whole model lies in the default library."""

    name: str
    dim: int
    description: str
    force: Optional[Callable]
    grad_k: Optional[Callable]
    drift: Callable
    diffusion: Callable
    mixture: List[Tuple[float, Sequence[float], float]]
    terms: Dict[str, float]
    polynomial: bool = True
    extra: dict = field(default_factory=dict)


def _sign_power(c: Dict[int, float]):
    return lambda r: sum(v * m * np.abs(r) ** (m - 1) * np.sign(r) for m, v in c.items())


def _power_system(name, description, kernel, drift, drift_terms, diffusion, mixture, diffusion_terms=None):
    terms = {f"K:|x|^{m}": v for m, v in kernel.items()}
    terms.update({f"dV/dx1:x^{m}": v for m, v in drift_terms.items()})
    terms.update(diffusion_terms or {"D:x^0": diffusion})
    noise = diffusion if callable(diffusion) else (lambda x, d=diffusion: np.full_like(x, d))
    return SuiteSystem(name, 1, description, lambda x: power_force_1d(x, kernel), _sign_power(kernel),
                       drift, noise, mixture, terms)


def _systems() -> Dict[str, SuiteSystem]:
    systems = {}
    systems["power_pair_well"] = _power_system(
        "power_pair_well", "K = -|x| + |x|^3/3 (short-range repulsion, long-range attraction), V' = x^3 - x, "
        "sigma = 0.3, asymmetric start", {1: -1.0, 3: 1 / 3}, lambda x: x ** 3 - x, {1: -1.0, 3: 1.0}, 0.045,
        [(0.7, [-0.9], 0.2), (0.3, [0.9], 0.3)])
    systems["cubic_well"] = _power_system(
        "cubic_well", "K = |x|^3/3, V' = x^3 - x, sigma = 0.3, asymmetric start", {3: 1 / 3},
        lambda x: x ** 3 - x, {1: -1.0, 3: 1.0}, 0.045, [(0.3, [-1.2], 0.2), (0.7, [0.8], 0.3)])
    systems["quadratic_quartic_tilt"] = _power_system(
        "quadratic_quartic_tilt", "K = -|x|^2/2 + |x|^4/4, V' = x + 0.5 (odd V' with a constant: linear tilt), "
        "D = 0.03, bimodal start", {2: -0.5, 4: 0.25}, lambda x: x + 0.5, {0: 0.5, 1: 1.0}, 0.03,
        [(0.5, [-1.0], 0.25), (0.5, [1.4], 0.2)])
    systems["linear_repulsion_even"] = _power_system(
        "linear_repulsion_even", "K = -0.5|x| + |x|^2/2 (QANR-like), V' = x^3 + 0.4 x^2 (V even part + cubic tilt), "
        "D = 0.02, asymmetric start", {1: -0.5, 2: 0.5}, lambda x: x ** 3 + 0.4 * x ** 2, {2: 0.4, 3: 1.0}, 0.02,
        [(0.8, [0.6], 0.2), (0.2, [-1.0], 0.15)])
    systems["state_diffusion"] = _power_system(
        "state_diffusion", "K = |x|^3/6, V' = x, D(x) = 0.02 + 0.02 x^2 (state-dependent noise), bimodal start",
        {3: 1 / 6}, lambda x: x, {1: 1.0}, lambda x: 0.02 + 0.02 * x ** 2,
        [(0.5, [-1.2], 0.2), (0.5, [1.0], 0.3)], {"D:x^0": 0.02, "D:x^2": 0.02})
    morse = [(-1.0, 0.5), (0.5, 0.15)]  # attraction range 0.5, repulsion range 0.15
    systems["morse_1d"] = SuiteSystem(
        "morse_1d", 1, "Morse K = -exp(-|x|/0.5) + 0.5 exp(-|x|/0.15), V' = 0.5 x, D = 0.01, asymmetric start",
        lambda x: exponential_force_1d(x, morse),
        lambda r: sum(-(a / l) * np.exp(-np.abs(r) / l) * np.sign(r) for a, l in morse),
        lambda x: 0.5 * x, lambda x: np.full_like(x, 0.01), [(0.6, [-0.8], 0.3), (0.4, [1.0], 0.4)],
        {"dV/dx1:x^1": 0.5, "D:x^0": 0.01}, polynomial=False, extra={"morse": morse})
    systems["gaussian_1d"] = SuiteSystem(
        "gaussian_1d", 1, "Gaussian attraction K = -exp(-x^2/(2 0.4^2)), V' = x^3, D = 0.02, bimodal start",
        lambda x: gaussian_force_1d(x, 1.0, 0.4),
        lambda r: r / 0.16 * np.exp(-r ** 2 / 0.32),
        lambda x: x ** 3, lambda x: np.full_like(x, 0.02), [(0.5, [-1.0], 0.2), (0.5, [0.9], 0.25)],
        {"dV/dx1:x^3": 1.0, "D:x^0": 0.02}, polynomial=False, extra={"gaussian": (1.0, 0.4)})

    def grad_k_2d(r):
        squares = (r * r).sum(-1, keepdims=True)
        return -1.0 * r + 0.5 * 4 * squares * r / 4  # K = -|x|^2/2 + |x|^4/8

    systems["quartic_anisotropic_2d"] = SuiteSystem(
        "quartic_anisotropic_2d", 2, "K = -|x|^2/2 + |x|^4/8, V = x1^2/2 - 0.5 x1 + x2^2, D = diag(0.04, 0.015), "
        "asymmetric start", lambda x: even_power_force_2d(x, -0.5, 0.125), grad_k_2d,
        lambda x: np.stack((x[..., 0] - 0.5, 2 * x[..., 1]), -1),
        lambda x: np.stack((np.full_like(x[..., 0], 0.04), np.full_like(x[..., 0], 0.015)), -1),
        [(0.6, [-1.0, 0.5], 0.3), (0.4, [1.0, -0.4], 0.2)],
        {"K:|x|^2": -0.5, "K:|x|^4": 0.125, "V:x1^1*x2^0": -0.5, "V:x1^2*x2^0": 0.5, "V:x1^0*x2^2": 1.0,
         "D11:cos(0x1)*cos(0x2)": 0.04, "D22:cos(0x1)*cos(0x2)": 0.015})
    return systems


SYSTEMS = _systems()
POLYNOMIAL = [name for name, system in SYSTEMS.items() if system.polynomial]


def simulate(name: str, n_particles: int, n_experiments: int = 1, seed: int = 0, t_end: float = 2.0,
             record_every: float = 0.02, dt: float = 2e-3) -> Tuple[np.ndarray, np.ndarray]:
    """Euler-Maruyama (Ito) on ``[0, t_end]``; returns ``positions (M, L, N, d)`` and ``times (L,)``."""
    system = SYSTEMS[name]
    rng = np.random.default_rng(seed)
    count = n_experiments * n_particles
    weights = np.array([w for w, _, _ in system.mixture])
    component = rng.choice(len(weights), size=count, p=weights / weights.sum())
    means = np.array([list(m) for _, m, _ in system.mixture], dtype=np.float64)
    stds = np.array([s for _, _, s in system.mixture])
    x = means[component] + stds[component, None] * rng.standard_normal((count, system.dim))
    x = x.reshape(n_experiments, n_particles, system.dim)
    per_record = int(round(record_every / dt))
    records = int(round(t_end / record_every))
    frames = [x.copy()]
    for _ in range(records):
        for _ in range(per_record):
            state = x[..., 0] if system.dim == 1 else x
            drift = -system.drift(state)
            if system.force is not None:
                drift = drift - system.force(state)
            noise = np.sqrt(2 * np.maximum(system.diffusion(state), 0) * dt)
            if system.dim == 1:
                drift, noise = drift[..., None], noise[..., None]
            x = x + drift * dt + noise * rng.standard_normal(x.shape)
        frames.append(x.copy())
    return np.stack(frames, 1), np.arange(records + 1) * record_every
