"""Up-front memory sizing: refuse a request that cannot fit before allocating anything.

A request for 1e10 particles or a 300000^2 grid would otherwise fail after tens of seconds with
an allocator error (or swap the machine). Each entry point estimates its peak bytes from the
sizes it was given and calls :func:`check_fits`, which compares the estimate with the free
memory of the device (``MemAvailable`` of ``/proc/meminfo`` on CPU, ``torch.cuda.mem_get_info``
on CUDA) and raises a one-line ``ValueError`` naming the argument, the estimate and the limit.
The estimates count the large arrays only (records, states, grids); they are lower bounds of
the true peak, so a refused request would certainly have failed.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

__all__ = ["free_bytes", "check_fits", "format_bytes", "dtype_bytes", "check_simulation_fits"]


def free_bytes(device=None) -> Optional[int]:
    """Free memory of ``device`` in bytes (None when it cannot be read); ``device="any"``: the
    largest over the CPU and the CUDA devices (for objects not yet tied to a device)."""
    if device == "any":
        candidates = [free_bytes("cpu")] + [free_bytes(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        known = [value for value in candidates if value is not None]
        return max(known) if known else None
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def dtype_bytes(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if dtype is not None else 4


def format_bytes(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} B"


def check_fits(name: str, estimate: float, device=None, what: str = "this request") -> None:
    """Raise ``ValueError`` naming ``name`` if ``estimate`` bytes exceed the free memory of ``device``."""
    if not math.isfinite(estimate):
        raise ValueError(f"{name}: {what} is too large to size (overflow)")
    free = free_bytes(device)
    if free is not None and estimate > free:
        where = "any device" if device == "any" else str(torch.device(device)) if device is not None else "cpu"
        raise ValueError(f"{name}: {what} needs about {format_bytes(estimate)}, more than the "
                         f"{format_bytes(free)} free on {where}; ask for less")


#: Live copies of the state during one step (state, drift, noise, interaction temporaries, next state).
STATE_COPIES = 8


def check_simulation_fits(n_experiments: int, n_times: int, n_particles: int, dim: int, dtype, device,
                          name: str = "n_particles") -> None:
    """Refuse a simulation whose record ``(M, L, N, d)`` plus working states cannot fit on ``device``."""
    item = dtype_bytes(dtype)
    state = float(n_experiments) * n_particles * dim * item
    estimate = state * n_times + STATE_COPIES * state
    check_fits(name, estimate, device, f"simulating M={n_experiments} x N={n_particles} particles in {dim}-D "
               f"recorded at {n_times} times")
