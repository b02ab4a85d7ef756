"""Benchmark the interaction backends (issue 2 speed lines).

Checks:
- 2-D Gaussian-kernel force, N = 20,000 sources and queries: grid backend >= 100x faster than the
  chunked pairwise backend, relative L2 difference <= 1e-2.
- One grid-backend force evaluation for N = 1,000,000 particles in 2-D under 1 s on the CPU,
  peak memory (process RSS) under 2 GB.

    python scripts/bench_interaction.py [--out runs/] [--quick]
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf.grid import Grid  # noqa: E402
from torchmf.interaction import InteractionForce  # noqa: E402
from torchmf.kernels import GaussianKernel  # noqa: E402
from torchmf.metrics import relative_error  # noqa: E402
from torchmf.plots import line_plot  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, times


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--bandwidth", type=float, default=0.5)
    parser.add_argument("--grid-size", type=int, default=256)
    args = parser.parse_args(argv)
    report = Report("bench_interaction", args)
    n_large = 200_000 if args.quick else 1_000_000
    n_small = 5_000 if args.quick else 20_000
    kernel = GaussianKernel(args.bandwidth, dim=2)
    grid = Grid(-7, 7, args.grid_size, dim=2)
    report.settings.update(bandwidth=args.bandwidth, grid=repr(grid), n_large=n_large, n_small=n_small,
                           threads=torch.get_num_threads(), dtype="float32")
    generator = torch.Generator().manual_seed(0)

    # 1. large N on the grid first, so the peak RSS belongs to it
    baseline_rss = peak_rss_gb()
    large = torch.randn(n_large, 2, generator=generator)
    force = InteractionForce(kernel, "grid", grid=grid)
    _, first = timed(lambda: force(large), 1)
    _, steady = timed(lambda: force(large), 5)
    large_seconds = statistics.median(steady)
    rss = peak_rss_gb()
    report.metrics.update(large_first_call_seconds=first[0], large_seconds_median=large_seconds,
                          large_seconds_all=steady, peak_rss_gb=rss, baseline_rss_gb=baseline_rss)

    # 2. pairwise vs grid at N = 20,000
    small = torch.randn(n_small, 2, generator=generator)
    exact, pairwise_times = timed(lambda: InteractionForce(kernel, "pairwise")(small), 2)
    fresh = InteractionForce(kernel, "grid", grid=grid)
    _, fresh_times = timed(lambda: fresh(small), 1)
    approximate, grid_times = timed(lambda: fresh(small), 5)
    pairwise_seconds, grid_seconds = min(pairwise_times), statistics.median(grid_times)
    speedup = pairwise_seconds / grid_seconds
    difference = float(relative_error(approximate.double(), exact.double()))
    report.metrics.update(pairwise_seconds=pairwise_seconds, grid_seconds=grid_seconds,
                          grid_first_call_seconds=fresh_times[0], speedup=speedup,
                          speedup_including_spectrum=pairwise_seconds / fresh_times[0],
                          relative_l2_difference=difference)
    # baselines: the pairwise sum (its time at n_large extrapolated as N^2 from the measured n_small; its
    # dense N x N float32 kernel matrix, size computed, never allocated), and the zero force
    pairwise_large = pairwise_seconds * (n_large / n_small) ** 2
    dense_gb = 4 * n_large ** 2 / 1024 ** 3
    report.metrics.update(pairwise_seconds_extrapolated_to_n_large=pairwise_large, dense_matrix_gb_n_large=dense_gb)
    report.check(f"grid force N={n_large:,} 2-D, one evaluation (s)", round(large_seconds, 4), "< 1.0",
                 lambda v: v < 1.0, baseline=(f"pairwise, N^2 extrapolation of its measured N={n_small:,} time",
                                              round(pairwise_large, 1)))
    report.check(f"grid force N={n_large:,} peak process memory (GB)", round(rss, 3), "< 2.0", lambda v: v < 2.0,
                 baseline=("a dense N x N float32 kernel matrix (size computed, not allocated)", round(dense_gb, 1)))
    repeat = max(pairwise_times) / min(pairwise_times)
    report.check(f"grid vs pairwise speed-up, N={n_small:,}", round(speedup, 1), ">= 100", lambda v: v >= 100,
                 baseline=("pairwise against itself (its two timings)", round(repeat, 2)))
    report.check(f"grid vs pairwise relative L2 difference, N={n_small:,}", difference, "<= 1e-2",
                 lambda v: v <= 1e-2, baseline=("zero force", float(relative_error(torch.zeros_like(exact).double(),
                                                                                   exact.double()))))

    # 3. accuracy vs grid resolution (figure)
    sizes = [32, 64, 128, 256, 512]
    errors = []
    for size in sizes:
        result = InteractionForce(kernel, "grid", grid=Grid(-7, 7, size, dim=2))(small)
        errors.append(float(relative_error(result.double(), exact.double())))
    report.metrics["resolution_study"] = dict(zip(map(str, sizes), errors))
    line_plot(report.path("bench_interaction_resolution.png"), [14 / (s - 1) for s in sizes],
              {"grid vs pairwise": errors, "O(h^2)": [errors[0] * (s0 / s) ** 2 for s0, s in zip([sizes[0]] * 5, sizes)]},
              "grid spacing h", "relative L2 difference", f"Gaussian-kernel force (bandwidth {args.bandwidth}), N={n_small:,}",
              logx=True, logy=True, styles={"O(h^2)": "--"})
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
