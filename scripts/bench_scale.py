"""Scale benchmark (issue 8): sharded ensembles, the torch-native online Sinkhorn, and the GPU lines.

pykeops is made unimportable inside this script (``sys.modules["pykeops"] = None``), so every
Sinkhorn figure is the torch path. On a machine without CUDA it runs the CPU and multi-process
checks and lists each GPU check with "pass": null and a "skipped" reason. On a CUDA machine it
also times the GPU lines (online and multiscale Sinkhorn at N = 1e5 and 1e6, the grid force at
N = 1e8 with both deposits, one nudged step at N = 1e8, WSINDy on the three Table 5 examples).

    flock /tmp/torchmf-bench.lock python scripts/bench_scale.py [--out runs/] [--quick]

On a GPU machine (see scripts/gpu_check.sh for the whole sequence):

    python -m pytest -m cuda -q            # the cuda test suite (count recorded in docs/benchmarks.md)
    python scripts/bench_scale.py --out runs/gpu
    python scripts/bench_wsindy.py --out runs/gpu    # times CUDA too when it is available
    python scripts/bench_nudging.py --out runs/gpu   # N = 1e7 nudged step on CUDA
"""
from __future__ import annotations

import sys

sys.modules["pykeops"] = None  # the acceptance lines are measured without KeOps: make it unimportable

import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf import distributed  # noqa: E402
from torchmf.grid import Grid  # noqa: E402
from torchmf.interaction import InteractionForce  # noqa: E402
from torchmf.kernels import GaussianKernel, PeriodicKernel  # noqa: E402

NO_CUDA = "no CUDA device on this machine (torch.cuda.is_available() is False)"


def periodic_force(grid_size: int, sharded: bool) -> InteractionForce:
    kernel = PeriodicKernel(GaussianKernel(0.3, 2), 4.0)
    return InteractionForce(kernel, "grid", grid=Grid(0, 4, grid_size, periodic=True, dim=2), sharded=sharded)


def particles(n: int) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 4


def _shard_worker(rank, world, init_file, out_dir, n, grid_size, repeats):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = particles(n)[distributed.shard_slice(n)]
        force = periodic_force(grid_size, sharded=True)
        result = force(local)
        distributed.reset_traffic()
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            force(local)
            times.append(time.perf_counter() - start)
        traffic = distributed.traffic()
        torch.save(result, Path(out_dir) / f"force{rank}.pt")
        summary = {"seconds": statistics.median(times), "bytes_per_step": traffic["all_reduce_bytes"] / repeats,
                   "all_reduce_calls_per_step": traffic["all_reduce_calls"] / repeats,
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                   "local_particles": local.shape[0]}
        (Path(out_dir) / f"summary{rank}.json").write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


def sharded_checks(report: Report, n: int, grid_size: int) -> None:
    processes = 2
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mp.start_processes(_shard_worker, args=(processes, str(folder / "init"), str(folder), n, grid_size, 5),
                           nprocs=processes, join=True, start_method="spawn")
        sharded = torch.cat([torch.load(folder / f"force{r}.pt", weights_only=True) for r in range(processes)])
        summaries = [json.loads((folder / f"summary{r}.json").read_text()) for r in range(processes)]
    torch.set_num_threads(1)  # same per-process resources as one rank
    single_force = periodic_force(grid_size, sharded=False)
    everything = particles(n)
    single = single_force(everything)
    start = time.perf_counter()
    single_force(everything)
    single_seconds = time.perf_counter() - start
    difference = float((sharded - single).norm() / single.norm())
    expected_bytes = grid_size**2 * 4  # one float32 density grid per step
    report.metrics["sharded"] = {"processes": processes, "particles": n, "grid": grid_size, "ranks": summaries,
                                 "single_process_seconds": single_seconds,
                                 "expected_all_reduce_payload_bytes": expected_bytes}
    # baseline: a rank that forgets the all-reduce (the force of its own share only)
    share = n // processes
    alone = float((single_force(everything[:share]) - single[:share]).norm() / single[:share].norm())
    report.check(f"sharded ({processes} gloo processes) vs one process, grid force N={n:,} periodic 2-D, relative L2",
                 difference, "<= 1e-5", lambda v: v <= 1e-5,
                 baseline=("one rank's force from its own share only (no all-reduce)", alone))
    measured = summaries[0]["bytes_per_step"]
    report.check("all-reduce payload per step = one density grid (bytes), independent of N", measured,
                 f"== {expected_bytes} (G^d x 4 bytes)", lambda v: v == expected_bytes,
                 baseline=("all-gather of the particles instead (N x d x 4 bytes, computed)", n * 2 * 4))


def sinkhorn_check(report: Report, n: int, device, seconds_target: float, label: str,
                   method: str = "sinkhorn-online", peer: str = None) -> float:
    """Time ``transport_map(x, y, method)`` on the affine case (exact discrete map known); check the time,
    the 2% error to the exact map and, on CPU, the error against a long converged solve's (tolerance 1e-3,
    float64: issue 12's "<= 1.25x a converged reference"). Returns seconds."""
    from torchmf.transport import TransportSolver, affine_gaussian_case, resolve_method

    x, y, exact = affine_gaussian_case(n, device=device)
    TransportSolver(method)(x[:256], y[:256])  # warm-up (kernels, allocator)
    _synchronize(device)
    solver = TransportSolver(method)
    start = time.perf_counter()
    mapped = solver(x, y)
    _synchronize(device)
    seconds = time.perf_counter() - start
    error = float((mapped - exact).norm() / (exact - x).norm())
    backend = resolve_method(method, n, 2, device=x.device)
    report.metrics[f"sinkhorn_{label}"] = {"n": n, "method": method, "backend": backend, "seconds": seconds,
                                          "relative_error": error, "iterations": solver.last_iterations,
                                          "pykeops_importable": _keops_importable()}
    exact_seconds, exact_n = _exact_assignment_seconds(n, device)
    report.metrics[f"sinkhorn_{label}"]["exact_assignment_seconds"] = {"n": exact_n, "seconds": exact_seconds}
    scaled = exact_seconds * (n / exact_n) ** 3
    if peer is not None:  # quick: the target is the peer's own time in this run, and the peer the baseline
        time_baseline = (f"{peer} itself at N = {n}", seconds_target)
    else:
        time_baseline = (f"exact assignment (method='exact') measured at N = {exact_n}" +
                         (f", scaled as N^3 to N = {n}" if exact_n != n else ""), round(scaled, 3))
    report.check(f"{label}: time (s), method={method!r} ({backend})", round(seconds, 3), f"< {seconds_target}",
                 lambda v: v < seconds_target, baseline=time_baseline)
    shifted = x + (y.mean(0) - x.mean(0))
    shift_error = float((shifted - exact).norm() / (exact - x).norm())
    report.check(f"{label}: displacement error vs the exact affine map", round(error, 5), "<= 0.02", lambda v: v <= 0.02,
                 baseline=("translation by the difference of the means", round(shift_error, 4)))
    if torch.device(device).type == "cpu":
        # the sparse multiscale kernel (a dense solve to 1e-3 at N = 1e4 would take most of an hour here)
        long = TransportSolver("sinkhorn-multiscale", tolerance=1e-3, max_iterations=20_000)
        reference = long(x.double(), y.double())
        reference_error = max(float((reference - exact.double()).norm() / (exact - x).double().norm()), 1e-12)
        report.metrics[f"sinkhorn_{label}"].update(long_solve_error=reference_error,
                                                  long_solve_iterations=long.last_iterations)
        report.check(f"{label}: error / a long multiscale solve's (tolerance 1e-3, float64: {reference_error:.5f})",
                     round(error / reference_error, 3), "<= 1.25", lambda v: v <= 1.25,
                     baseline=("translation by the difference of the means", round(shift_error / reference_error, 2)))
    return seconds


def _scipy_assignment_seconds(n: int) -> float:
    """Seconds of scipy's ``linear_sum_assignment`` on the affine case's float64 cost matrix at ``n``."""
    from scipy.optimize import linear_sum_assignment

    from torchmf.transport import affine_gaussian_case

    x, y, _ = affine_gaussian_case(n, dtype=torch.float64)
    cost = torch.cdist(x, y).pow(2).numpy()
    start = time.perf_counter()
    linear_sum_assignment(cost)
    return time.perf_counter() - start


_EXACT_SECONDS = {}  # size -> seconds: one exact solve per size serves every check of the run


def _exact_assignment_seconds(n: int, device, limit: int = 10_000):
    """Seconds of the exact assignment map (``method="exact"``) on the affine case at min(n, limit) (CPU)."""
    from torchmf.transport import affine_gaussian_case, transport_map

    size = min(n, limit)
    if size not in _EXACT_SECONDS:
        x, y, _ = affine_gaussian_case(size, device="cpu")
        transport_map(x[:16], y[:16], "exact")  # the solver's import outside the timing
        start = time.perf_counter()
        transport_map(x, y, "exact")
        _EXACT_SECONDS[size] = time.perf_counter() - start
    return _EXACT_SECONDS[size], size


def cuda_sinkhorn_checks(report: Report) -> None:
    """Online and multiscale Sinkhorn on CUDA at N = 1e5 (< 1 s) and N = 1e6 (< 30 s)."""
    online_1e5 = sinkhorn_check(report, 100_000, "cuda", 1.0, "online Sinkhorn CUDA N=1e5")
    sinkhorn_check(report, 100_000, "cuda", 1.0, "multiscale Sinkhorn CUDA N=1e5", method="sinkhorn-multiscale")
    projected = online_1e5 * 100  # the online backend is O(N^2) per iteration
    if projected > 300:
        report.check("online Sinkhorn CUDA N=1e6: time (s)", None, "< 30", None,
                     skipped=f"not run: projected {projected:.0f} s from the N=1e5 run (O(N^2) work)",
                     baseline=("not measured", None))
    else:
        sinkhorn_check(report, 1_000_000, "cuda", 30.0, "online Sinkhorn CUDA N=1e6")
    sinkhorn_check(report, 1_000_000, "cuda", 30.0, "multiscale Sinkhorn CUDA N=1e6", method="sinkhorn-multiscale")


def nudged_step_check(report: Report, n: int, device="cuda") -> None:
    """One nudged grid step (bench_nudging's set-up: 256^2 free-space grid, N particles)."""
    from bench_nudging import step_timing

    timing = step_timing(n, device, repeats=5)
    milliseconds = 1000 * timing["nudged_step_seconds_median"]
    report.metrics["nudged_step"] = timing
    cpu = step_timing(1_000_000, "cpu", repeats=3)
    scaled = 1000 * cpu["nudged_step_seconds_median"] * n / 1_000_000
    report.check(f"one nudged step, N={n:.0e}, one GPU (ms, median of 5)", round(milliseconds, 2), "< 20",
                 lambda v: v < 20, baseline=("the CPU step at N = 1e6 scaled linearly to N", round(scaled, 1)))


def wsindy_cuda_check(report: Report, total: int = 64_000, device="cuda") -> None:
    """WSINDy on CUDA, Table 5 examples with 64,000 particles: at most 1/30 of the MATLAB times."""
    from bench_wsindy import datasets, time_identify

    device = torch.device(device)
    data = datasets(total, False, device, torch.float32)
    paper = {"local_2d": 9.7, "qanr_1d": 2.6, "keller_segel_2d": 8.5}  # MATLAB seconds, Table 5
    for name, trajectories in data.items():
        result = time_identify(trajectories, name, 3, device)
        report.metrics[f"wsindy_cuda_{name}"] = result
        target = paper[name] / 30
        cpu = time_identify(trajectories.to("cpu"), name, 1, torch.device("cpu"))["best_seconds"]
        report.check(f"WSINDy on {device.type}, {name}, {total:,} particles (s)", round(result["best_seconds"], 4),
                     f"<= {target:.3f} (1/30 of {paper[name]} s)", lambda v, target=target: v <= target,
                     baseline=(f"the same identify on the CPU ({torch.get_num_threads()} threads)", round(cpu, 3)))


def gpu_grid_force_check(report: Report, n: int, device="cuda") -> None:
    grid = Grid(0, 1, 1024, periodic=True, dim=2)
    kernel = PeriodicKernel(GaussianKernel(0.01, 2), 1.0)
    x = torch.rand(n, 2, device=device, generator=torch.Generator(device=device).manual_seed(0))
    results, timings = {}, {}
    for method in ("atomic", "sorted"):
        force = InteractionForce(kernel, "grid", grid=grid, check=False, deposit_method=method)
        results[method] = force(x)
        _synchronize(device)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            force(x)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        timings[method] = 1000 * statistics.median(times)
    best = min(timings, key=timings.get)
    difference = float((results["sorted"] - results["atomic"]).norm() / results["atomic"].norm())
    report.metrics["gpu_grid_force"] = {"n": n, "milliseconds": timings, "device": str(device)}
    cpu_points = x[:1_000_000].cpu()
    cpu_force = InteractionForce(kernel, "grid", grid=grid, check=False)
    cpu_force(cpu_points)
    start = time.perf_counter()
    cpu_force(cpu_points)
    cpu_scaled = 1000 * (time.perf_counter() - start) * n / cpu_points.shape[0]
    report.check(f"GPU grid force 2-D 1024^2, N={n:.0e} (ms, best deposit: {best})", round(timings[best], 2), "<= 10",
                 lambda v: v <= 10, baseline=("the CPU grid force at N = 1e6 scaled linearly to N", round(cpu_scaled, 1)))
    zero = float(results["atomic"].norm() / results["atomic"].norm())
    report.check("GPU grid force vs naive deposit, relative L2", difference, "<= 1e-5", lambda v: v <= 1e-5,
                 baseline=("zero force", zero))


def _keops_importable() -> bool:
    try:
        import pykeops  # noqa: F401
    except ImportError:
        return False
    return True


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the Sinkhorn checks (default 1: on a shared 2-core machine a "
                             "second OpenMP thread ran up to 10x slower; recorded in the JSON)")
    args = parser.parse_args(argv)
    report = Report("bench_scale", args)
    report.settings["threads"] = args.threads
    n_sharded = 50_000 if args.quick else 200_000
    n_sinkhorn = 2_000 if args.quick else 10_000
    report.settings.update(sharded_particles=n_sharded, grid=256, cuda=torch.cuda.is_available(),
                           sinkhorn_particles_cpu=n_sinkhorn, pykeops_importable=_keops_importable())

    sharded_checks(report, n_sharded, 256)
    torch.set_num_threads(args.threads)
    label = f"CPU N={n_sinkhorn:.0e}".replace("e+0", "e")
    # issue 12: a converged map at N = 1e4 in <= 10 s on one thread (the former "< 2 s" timed an unconverged
    # solve of 20 final iterations). Quick (N = 2,000): the N^2-scaled 0.4 s was set before the solver
    # converged (measured 13.2 s, issue 26); the target is now the peer measured in this run, scipy's
    # linear_sum_assignment at the same N (a converged entropic map is worth less than the exact one):
    # measured 6.9 s online and 4.6 s routed against scipy's 9.1 s (CPU seconds); in bench_scale --quick
    # 7.5 s and 7.1 s against 15.7 s (wall, load 5-11)
    seconds_target = 10.0 if n_sinkhorn == 10_000 else round(_scipy_assignment_seconds(n_sinkhorn), 2)
    report.metrics["sinkhorn_quick_target"] = {"peer": "scipy linear_sum_assignment", "n": n_sinkhorn,
                                               "seconds": seconds_target} if n_sinkhorn != 10_000 else None
    peer = None if n_sinkhorn == 10_000 else "scipy linear_sum_assignment"
    sinkhorn_check(report, n_sinkhorn, "cpu", seconds_target, f"online Sinkhorn {label}", peer=peer)
    # what method="sinkhorn" picks on CPU for d <= 3 (the multiscale torch backend): the routing rule's evidence
    sinkhorn_check(report, n_sinkhorn, "cpu", seconds_target, f"routed Sinkhorn {label}", method="sinkhorn",
                   peer=peer)

    gpu_lines = [
        ("online Sinkhorn CUDA N=1e5: time (s) and error", "< 1 s, <= 2%"),
        ("online Sinkhorn CUDA N=1e6: time (s) and error", "< 30 s, <= 2%"),
        ("GPU grid force 2-D 1024^2, N=1e8 (ms)", "<= 10"),
        ("GPU grid force vs naive deposit, relative L2", "<= 1e-5"),
        ("one nudged step, 1e8 particles, one GPU (ms)", "< 20"),
        ("WSINDy on CUDA, Table 5 examples with 64,000 particles", "<= 1/30 of 9.7 s, 2.6 s, 8.5 s"),
        ("cuda test suite on the GPU (python -m pytest -m cuda)", "all pass"),
    ]
    if torch.cuda.is_available():
        cuda_sinkhorn_checks(report)
        gpu_grid_force_check(report, 10_000_000 if args.quick else 100_000_000)
        nudged_step_check(report, 10_000_000 if args.quick else 100_000_000)
        wsindy_cuda_check(report)
        report.check(gpu_lines[-1][0], None, gpu_lines[-1][1], None,
                     skipped="run separately: python -m pytest -m cuda (see scripts/gpu_check.sh)",
                     baseline=("not measured here", None))
    else:
        for name, target in gpu_lines:
            report.check(name, None, target, None, skipped=NO_CUDA, baseline=("not measured here (no GPU)", None))
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
