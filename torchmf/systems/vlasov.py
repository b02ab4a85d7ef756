r"""1D-1V Vlasov-Poisson particle-in-cell on a periodic domain: ``vlasov_landau``, ``vlasov_two_stream``.

Electrons (charge -1, unit mass) on a neutralizing ion background, in normalized units
(plasma frequency 1, Debye length 1 for unit thermal speed):

.. math::
    \dot x_i = v_i, \qquad \dot v_i = E(x_i), \qquad \partial_x E = \rho - 1, \qquad
    \rho(x) = L \cdot (\text{electron density, mean } 1),

on :math:`x \in [0, L)`, :math:`L = 2\pi / k`. The state is phase space, ``(M, N, 2)`` =
``(x, v)``; ``positions`` records it whole (``d = 2``). The field is solved by FFT on a periodic
:class:`~torchmf.grid.Grid` of ``cells`` nodes: cloud-in-cell deposit, :math:`\hat E_m = \hat\rho_m /
(i k_m)` (mode 0 removed), cloud-in-cell interpolation back (momentum-conserving pairing). Time
stepping is the symplectic drift-kick-drift (Strang) scheme, second order, one field solve per
step. A ``coupling`` factor multiplies the field (1 is the physical model; other values are
the biased forecasts of the nudging benchmarks).

Initial data (quiet start, so that a small mode stays above the particle noise on a CPU):
positions are the quantiles :math:`(i + u)/N` of the perturbed law
:math:`(1 + \alpha\cos kx)/L` (inverted by Newton's method), velocities the normal quantiles of
a base-2 van der Corput sequence (decorrelated from the positions); the seed shifts both
sequences by uniform offsets (Cranley-Patterson rotation), so different seeds give different
but equally quiet loadings.

- ``vlasov_landau``: :math:`f_0 = (1 + \alpha\cos kx)\, \mathcal N(v; 0, v_{th}^2)`, defaults
  :math:`k = 0.5, \alpha = 0.01, v_{th} = 1`: the field's fundamental mode decays at the linear
  Landau rate :math:`\gamma = -0.1533` (frequency 1.4156).
- ``vlasov_two_stream``: two counter-streaming Maxwellian beams
  :math:`\tfrac12[\mathcal N(v; v_0, v_t^2) + \mathcal N(v; -v_0, v_t^2)]`, defaults :math:`k = 0.5,
  v_0 = 1.5, v_t = 0.3, \alpha = 0.01`; unstable (cold-beam growth rate 0.33 at :math:`k v_0 =
  0.75`), it saturates into phase-space vortices. ``single_maxwellian=True`` loads instead one
  Maxwellian with the same mean energy (the biased forecast of the benchmark).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_int, check_nonnegative, check_positive, check_points
from ..grid import Grid
from . import register
from .base import ParticleSystem

__all__ = ["VlasovPoissonPIC", "LandauDamping", "TwoStream", "field_mode", "landau_rate"]


class VlasovPoissonPIC(nn.Module):
    """Electrostatic 1D-1V PIC on ``[0, length)``: torchsde-compatible drift ``(v, E(x))`` and no noise.

    Arguments:
        length: domain length :math:`L`.
        cells: grid nodes for the field solve.
        coupling: factor on the electric field (1: physical).
    """

    sde_type = "ito"
    noise_type = "diagonal"
    dim = 2

    def __init__(self, length: float, cells: int = 64, coupling: float = 1.0, n_experiments: int = 1):
        super().__init__()
        self.length = check_positive("length", length)
        self.cells = check_int("cells", cells, minimum=4)
        self.coupling = float(coupling)
        self.n_experiments = check_int("n_experiments", n_experiments, minimum=1)
        self.grid = Grid(0.0, self.length, self.cells, periodic=True)

    def field_on_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Electric field at the nodes from positions ``x (M, N)``: ``(M, cells)``."""
        masses = self.grid.deposit(x.unsqueeze(-1), check=False)
        density = masses * (self.length / self.grid.cell_volume)  # mean 1
        spectrum = torch.fft.rfft(density - 1.0, dim=-1)
        wavenumbers = 2 * math.pi / self.length * torch.arange(spectrum.shape[-1], device=x.device, dtype=x.dtype)
        safe = torch.where(wavenumbers > 0, wavenumbers, torch.ones_like(wavenumbers))
        field_spectrum = torch.where(wavenumbers > 0, spectrum / (1j * safe), torch.zeros_like(spectrum))
        return self.coupling * torch.fft.irfft(field_spectrum, n=self.cells, dim=-1)

    def electric_field(self, x: torch.Tensor) -> torch.Tensor:
        """Field at the particles ``x (M, N) -> (M, N)``."""
        return self.grid.interpolate(self.field_on_grid(x), x.unsqueeze(-1), check=False)

    def drift(self, t, state: torch.Tensor) -> torch.Tensor:
        return torch.stack((state[..., 1], self.electric_field(state[..., 0])), -1)

    def f(self, t, y):
        return self.drift(t, y.reshape(self.n_experiments, -1, 2)).reshape_as(y)

    def g(self, t, y):
        return torch.zeros_like(y)

    def wrap(self, x: torch.Tensor) -> torch.Tensor:
        return torch.remainder(x, self.length)

    def step(self, t, state: torch.Tensor, dt: float, generator=None) -> torch.Tensor:
        """Drift-kick-drift of ``state (M, N, 2)``."""
        x, v = state[..., 0], state[..., 1]
        x = self.wrap(x + 0.5 * dt * v)
        v = v + dt * self.electric_field(x)
        x = self.wrap(x + 0.5 * dt * v)
        return torch.stack((x, v), -1)


def field_mode(pic: VlasovPoissonPIC, state: torch.Tensor, mode: int = 1) -> torch.Tensor:
    """Amplitude of Fourier mode ``mode`` of the field: ``|E_m|`` with ``E = A sin(k_m x)`` giving ``A``.

    ``state``: ``(..., N, 2)``; returns ``(...)``.
    """
    state = check_points("state", state, 2)
    flat = state.reshape(-1, state.shape[-2], 2)
    field = pic.field_on_grid(flat[..., 0])
    amplitude = torch.fft.rfft(field, dim=-1)[..., mode].abs() * 2 / pic.cells
    return amplitude.reshape(state.shape[:-2])


def landau_rate(times: torch.Tensor, amplitude: torch.Tensor, t_max: float = None) -> float:
    """Damping rate from the local maxima of ``|E_1(t)|`` (least-squares slope of their logarithm).

    ``times (L,)``, ``amplitude (L,)``; peaks after ``t_max`` are ignored (noise floor, recurrence).
    """
    times = torch.as_tensor(times, dtype=torch.float64).cpu()
    values = torch.as_tensor(amplitude, dtype=torch.float64).cpu()
    peaks = [i for i in range(1, len(values) - 1) if values[i] >= values[i - 1] and values[i] > values[i + 1]]
    if t_max is not None:
        peaks = [i for i in peaks if times[i] <= t_max]
    if len(peaks) < 2:
        raise ValueError(f"amplitude: expected at least two local maxima to fit a rate, but found {len(peaks)}")
    t, y = times[peaks], values[peaks].log()
    slope = ((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum()
    return float(slope)


def _van_der_corput(count: int, device, dtype) -> torch.Tensor:
    index = torch.arange(count, device=device, dtype=torch.int64)
    result = torch.zeros(count, device=device, dtype=torch.float64)
    scale = 0.5
    while bool((index > 0).any()):
        result = result + scale * (index & 1).to(torch.float64)
        index = index >> 1
        scale = scale / 2
    return result.to(dtype)


def _perturbed_positions(quantiles: torch.Tensor, length: float, k: float, alpha: float) -> torch.Tensor:
    """Invert the CDF of ``(1 + alpha cos kx)/L``: solve ``x + alpha sin(kx)/k = L u`` by Newton."""
    target = quantiles.double() * length
    x = target.clone()
    for _ in range(30):
        x = x - (x + alpha * torch.sin(k * x) / k - target) / (1 + alpha * torch.cos(k * x))
    return x.to(quantiles.dtype)


class _VlasovSystem(ParticleSystem):
    dim = 2
    default_particles = 100_000
    default_dt = 0.1
    default_record_dt = 0.1

    def _setup(self, k, alpha, cells, coupling):
        self.k = check_positive("k", k)
        self.alpha = check_nonnegative("alpha", alpha)
        if self.alpha >= 1:
            raise ValueError(f"alpha: expected a perturbation amplitude below 1, but got {alpha}")
        self.cells = check_int("cells", cells, minimum=4)
        self.coupling = float(coupling)
        self.length = 2 * math.pi / self.k
        self.pic = VlasovPoissonPIC(self.length, self.cells, self.coupling)

    def _velocity_quantiles(self, n_particles, n_experiments, generator, device, dtype):
        base = _van_der_corput(n_particles, device, torch.float64)
        shift = torch.rand((n_experiments, 1), generator=generator, device=device, dtype=torch.float64)
        quantiles = torch.remainder(base + shift, 1.0)
        return quantiles.clamp(1e-12, 1 - 1e-12)

    def _positions(self, n_particles, n_experiments, generator, device, dtype):
        shift = torch.rand((n_experiments, 1), generator=generator, device=device, dtype=torch.float64)
        quantiles = (torch.arange(n_particles, device=device, dtype=torch.float64) + shift) / n_particles
        return _perturbed_positions(quantiles, self.length, self.k, self.alpha)

    def step(self, t, state, dt, generator):
        return self.pic.step(t, state, dt, generator)

    def field_mode(self, state, mode: int = 1) -> torch.Tensor:
        """``|E_mode|`` of states ``(..., N, 2)``."""
        return field_mode(self.pic, state, mode)


@register("vlasov_landau")
class LandauDamping(_VlasovSystem):
    """Arguments: ``k`` (0.5), ``alpha`` (0.01), ``thermal_velocity`` (1), ``cells`` (64), ``coupling`` (1)."""

    default_t_end = 30.0
    reference_rate = -0.1533

    def __init__(self, k: float = 0.5, alpha: float = 0.01, thermal_velocity: float = 1.0, cells: int = 64,
                 coupling: float = 1.0):
        self._setup(k, alpha, cells, coupling)
        self.thermal_velocity = check_positive("thermal_velocity", thermal_velocity)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        x = self._positions(n_particles, n_experiments, generator, device, dtype)
        u = self._velocity_quantiles(n_particles, n_experiments, generator, device, dtype)
        v = self.thermal_velocity * torch.special.ndtri(u)
        return torch.stack((x, v), -1).to(dtype)


@register("vlasov_two_stream")
class TwoStream(_VlasovSystem):
    """Arguments: ``k`` (0.5), ``alpha`` (0.01), ``beam_velocity`` (1.5), ``beam_spread`` (0.3), ``cells``
    (64), ``coupling`` (1), ``single_maxwellian`` (False: the biased one-Maxwellian loading)."""

    default_t_end = 40.0

    def __init__(self, k: float = 0.5, alpha: float = 0.01, beam_velocity: float = 1.5, beam_spread: float = 0.3,
                 cells: int = 64, coupling: float = 1.0, single_maxwellian: bool = False):
        self._setup(k, alpha, cells, coupling)
        self.beam_velocity = check_nonnegative("beam_velocity", beam_velocity)
        self.beam_spread = check_positive("beam_spread", beam_spread)
        self.single_maxwellian = bool(single_maxwellian)

    def initial_state(self, n_particles, n_experiments, generator, device, dtype):
        x = self._positions(n_particles, n_experiments, generator, device, dtype)
        u = self._velocity_quantiles(n_particles, n_experiments, generator, device, dtype)
        if self.single_maxwellian:
            spread = math.sqrt(self.beam_velocity ** 2 + self.beam_spread ** 2)  # same mean energy
            v = spread * torch.special.ndtri(u)
        else:
            # the lower half of the quantiles fills the left beam, the upper half the right beam
            lower = u < 0.5
            inner = torch.where(lower, 2 * u, 2 * u - 1).clamp(1e-12, 1 - 1e-12)
            sign = torch.where(lower, -1.0, 1.0).to(inner)
            v = sign * self.beam_velocity + self.beam_spread * torch.special.ndtri(inner)
        return torch.stack((x, v), -1).to(dtype)
