"""Protocol shared by the micro-simulators.

A :class:`ParticleSystem` knows its dimension, how to draw an initial ensemble, how to advance
a state by one micro step, and its default sizes. :meth:`ParticleSystem.simulate` records the
positions (and any extra per-particle state) at requested times. Systems with hidden
per-particle state override :meth:`initial_state`, :meth:`step`, :meth:`positions` and
:meth:`extras`; the state is then any object those methods agree on.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .._validation import check_int, check_positive
from ..data import Trajectories
from .._memory import check_simulation_fits
from ..sde import DivergenceGuard, McKeanVlasovSDE, make_generator, record_loop

__all__ = ["ParticleSystem", "SDESystem", "MAX_RECORDED_TIMES"]

#: More recorded snapshots than this is a mistake in t_end / record_dt, not a dataset.
MAX_RECORDED_TIMES = 10_000_000


class ParticleSystem:
    """Base class of the registered systems.

    Class attributes (defaults used by :meth:`simulate` and the CLI): ``dim``,
    ``default_particles``, ``default_t_end``, ``default_dt`` (micro step), ``default_record_dt``.
    """

    dim: int = 1
    default_particles: int = 1000
    default_t_end: float = 1.0
    default_dt: float = 1e-2
    default_record_dt: float = 0.1

    # -- protocol ---------------------------------------------------------------------------------
    def initial_state(self, n_particles: int, n_experiments: int, generator, device, dtype):
        raise NotImplementedError

    def step(self, t: float, state, dt: float, generator):
        raise NotImplementedError

    def positions(self, state) -> torch.Tensor:
        """Positions ``(M, N, d)`` of a state."""
        return state

    def extras(self, state) -> Dict[str, torch.Tensor]:
        """Extra per-particle state to record, name -> ``(M, N, k)``."""
        return {}

    def parameters(self) -> dict:
        """JSON-serializable parameters (stored in the dataset's metadata)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and _jsonable(v)}

    # -- driver -------------------------------------------------------------------------------------
    def default_times(self, t_end: Optional[float] = None, record_dt: Optional[float] = None) -> torch.Tensor:
        t_end = check_positive("t_end", self.default_t_end if t_end is None else t_end)
        record_dt = check_positive("record_dt", self.default_record_dt if record_dt is None else record_dt)
        count = max(1, round(t_end / record_dt))
        if count > MAX_RECORDED_TIMES:
            raise ValueError(f"record_dt: t_end / record_dt = {count} recorded times, more than {MAX_RECORDED_TIMES}; "
                             f"record less often")
        return torch.linspace(0.0, t_end, count + 1, dtype=torch.float64)

    def simulate(self, n_particles: Optional[int] = None, n_experiments: int = 1, times=None,
                 dt: Optional[float] = None, seed: Optional[int] = 0, t_end: Optional[float] = None,
                 record_dt: Optional[float] = None, device=None, dtype=torch.float32,
                 progress: bool = True, generator: Optional[torch.Generator] = None,
                 initial_state=None) -> Trajectories:
        """Simulate ``n_experiments`` independent ensembles of ``n_particles`` particles.

        Arguments:
            n_particles: ``N`` (default: the system's ``default_particles``).
            n_experiments: ``M``.
            times: recording times ``(L,)``; default ``0, record_dt, ..., t_end``.
            dt: micro step (default ``default_dt``).
            seed: seed of the generator on ``device`` (same seed, same device: same result).
            device / dtype: where and in which precision to simulate.
            progress: progress bar.
            initial_state: start from this state instead of drawing one.

        Returns:
            :class:`~torchmf.data.Trajectories` ``(M, L, N, d)`` with the system's name,
            parameters, seed and step in ``meta``.
        """
        n_particles = check_int("n_particles", self.default_particles if n_particles is None else n_particles, 1)
        n_experiments = check_int("n_experiments", n_experiments, minimum=1)
        dt = check_positive("dt", self.default_dt if dt is None else dt)
        times = self.default_times(t_end, record_dt) if times is None else torch.as_tensor(times, dtype=torch.float64)
        if times.ndim != 1 or times.numel() < 1 or bool((times[1:] <= times[:-1]).any()):
            raise ValueError("times: expected a non-empty, strictly increasing 1-D sequence")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: CUDA was asked for, but torch.cuda.is_available() is False")
        if initial_state is None:  # sized before anything is allocated (1e10 particles are refused at once)
            check_simulation_fits(n_experiments, times.numel(), n_particles, self.dim, dtype, device)
        if generator is None:
            generator = make_generator(seed, device)
        state = initial_state
        if state is None:
            state = self.initial_state(n_particles, n_experiments, generator, device, dtype)
        positions = self.positions(state)
        record = positions.new_empty((positions.shape[0], times.numel()) + tuple(positions.shape[1:]))
        extra_records: Dict[str, torch.Tensor] = {}
        guard = DivergenceGuard(positions, dt, self.registered_name, getattr(self, "boundary", None))

        def store(index, current):
            current_positions = self.positions(current)
            guard(current_positions, float(times[index]))
            record[:, index] = current_positions
            for name, value in self.extras(current).items():
                if name not in extra_records:
                    extra_records[name] = value.new_empty((value.shape[0], times.numel()) + tuple(value.shape[1:]))
                extra_records[name][:, index] = value

        def advance(t, current, h):
            return self.step(t, current, h, generator)

        with torch.no_grad():
            record_loop(advance, state, times.tolist(), dt, store, progress, description=self.registered_name)
        meta = {"system": self.registered_name, "params": self.parameters(), "seed": seed, "dt": dt,
                "device": str(device), "dtype": str(dtype).replace("torch.", "")}
        return Trajectories(record, times.to(device=device, dtype=dtype), meta, extra_records)

    registered_name = "unregistered"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parameters()})"


class SDESystem(ParticleSystem):
    """A system whose micro step is one Euler-Maruyama step of ``self.sde`` (a
    :class:`~torchmf.sde.McKeanVlasovSDE`), followed by ``self.boundary`` if any."""

    sde: McKeanVlasovSDE
    boundary = None

    def step(self, t, state, dt, generator):
        state = self.sde.step(t, state, dt, generator)
        return self.boundary.apply(state) if self.boundary is not None else state


def _jsonable(value) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False
