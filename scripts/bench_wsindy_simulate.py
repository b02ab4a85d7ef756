"""Benchmark WSINDyModel.simulate: N = 3,000 particles in 2-D, 50 steps, one thread (issue 15).

Examples:
    python scripts/bench_wsindy_simulate.py --out runs/
    python scripts/bench_wsindy_simulate.py --quick --out runs/

The model has every part selected, as identified models of chemotaxis data do: the regularized
log attraction of the Keller-Segel library ``K = [log|x|]_0.01 / (2 pi)``, a quadratic confinement
``V = 0.25 (x1^2 + x2^2)`` and a constant diffusivity ``D = 0.05``. The timed call is
``model.simulate(x0, times, dt)`` with 50 Euler steps (``times`` every ``dt``), from a standard
normal cloud, after one short warm-up. Checks: the default (grid) backend takes <= 10 s on one
thread, against the exact dense backend timed in the same run (the old default); and the grid
run agrees with the dense run (same seed, so the same noise) in W2 at the final time, against
the trivial answer of leaving the interaction out.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf import wsindy  # noqa: E402
from torchmf.metrics import w2  # noqa: E402

TARGET_SECONDS = 10.0


def model(interaction: bool = True) -> wsindy.WSINDyModel:
    library = wsindy.load_library("keller_segel_2d", 2)
    coefficients = torch.zeros(len(library), dtype=torch.float64)
    values = {"K:[log|x|]_0.01": 1 / (2 * math.pi) if interaction else 0.0, "V:x1^2*x2^0": 0.25,
              "V:x1^0*x2^2": 0.25, "D11:cos(0x1)*cos(0x2)": 0.05, "D22:cos(0x1)*cos(0x2)": 0.05}
    for name, value in values.items():
        coefficients[library.names.index(name)] = value
    return wsindy.WSINDyModel(library, coefficients)


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main() -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = Report("bench_wsindy_simulate", args)
    particles, steps, dt = (1000, 20, 0.02) if args.quick else (3000, 50, 0.02)
    report.settings.update(particles=particles, steps=steps, dt=dt, dimension=2, threads=args.threads,
                           dtype="float64")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, particles, 2, generator=generator, dtype=torch.float64)
    times = torch.arange(steps + 1, dtype=torch.float64) * dt
    full = model()
    full.simulate(x0[:, :200], times[:3], dt, progress=False, backend="grid")  # warm-up (FFT plans, kernels)
    grid_run, grid_seconds = timed(lambda: full.simulate(x0, times, dt, seed=1, progress=False))
    dense_run, dense_seconds = timed(lambda: full.simulate(x0, times, dt, seed=1, progress=False, backend="dense"))
    without = model(interaction=False).simulate(x0, times, dt, seed=1, progress=False)
    final_dense = dense_run.positions[0, -1]
    grid_error = float(w2(grid_run.positions[0, -1], final_dense))
    without_error = float(w2(without.positions[0, -1], final_dense))
    spread = float(final_dense.std(0).norm())
    report.metrics.update(grid_seconds=grid_seconds, dense_seconds=dense_seconds,
                          speedup=dense_seconds / grid_seconds, seconds_per_step_grid=grid_seconds / steps,
                          w2_grid_vs_dense=grid_error, w2_no_interaction_vs_dense=without_error,
                          final_spread=spread)
    report.check(f"simulate N={particles}, {steps} steps, default backend (s)", grid_seconds,
                 f"<= {TARGET_SECONDS:g}", lambda v: v <= TARGET_SECONDS,
                 baseline=("exact dense backend (the old default)", dense_seconds))
    tolerance = 0.02 * spread
    report.check("W2(grid run, dense run) at the final time", grid_error, f"<= 2% of the spread ({tolerance:.4f})",
                 lambda v: v <= tolerance, baseline=("interaction left out", without_error))
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
