"""Benchmark multiscale nudging (issue 3): step cost, nudged vs un-nudged, grid vs pairwise.

    flock /tmp/torchmf-bench.lock .venv/bin/python scripts/bench_nudging.py [--quick] [--out runs/]

Fixed setup:

- Step cost: N = 1,000,000 particles in 2-D. Base model: an aggregation SDE
  dX = (-X - grad K_0.5 * mu) dt + 0.5 dW with a Gaussian interaction on the grid backend (256^2
  nodes on [-6, 6]^2), i.e. a base step that itself costs one deposit, one FFT convolution and
  one interpolation. Observations: snapshots of 1,000,000 particles of N(0.3, 0.8^2 I) (a
  static target), h = 0.3, lambda = 1, grid backend on the same box; the automatic bound gives one
  sub-step. Timed: the median of 5 steps (after one warm-up step that builds the FFT spectra),
  and runs of 5 steps with and without nudging.
- Grid vs pairwise: the 1-D linear benchmark (reference a = 1, biased a = 5), N = 20,000 (quick
  5,000), t in [0, 0.2], dt = 0.01, lambda = 10, h = 0.2, identical noise (same seed): the wall
  time of the two runs and their final W2 to the reference (exact, by sorting).
- GPU: the step for 10,000,000 particles where CUDA is available (skipped otherwise).
- Stiff nudging (issue 13): the README's ou_linear example at lambda = 0, 1e2, 1e4, 1e6 with the
  default scheme, against the explicit scheme at lambda = 1e4 (its cost) and at 1e6 with the
  implicit scheme's sub-step budget (it blows up); see :func:`stiff_strengths`.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, device_name, standard_parser  # noqa: E402

import torch  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_timing(n, device, repeats=5):
    from torchmf.grid import Grid
    from torchmf.interaction import InteractionForce
    from torchmf.kernels import GaussianKernel
    from torchmf.nudging import NudgedSDE, ParticleObservations
    from torchmf.sde import McKeanVlasovSDE, make_generator

    generator = make_generator(0, device)
    box = Grid(-6, 6, 256, dim=2)
    base = McKeanVlasovSDE(2, external_force=lambda x: -x,
                           interaction=InteractionForce(GaussianKernel(0.5, dim=2), backend="grid", grid=box),
                           diffusion=0.5)
    x = torch.randn(1, n, 2, generator=generator, device=device)
    target = 0.3 + 0.8 * torch.randn(1, 2, n, 2, generator=generator, device=device)
    observations = ParticleObservations(target, times=[0.0, 1.0])
    nudged = NudgedSDE(base, observations, 0.3, 1.0, grid=box)
    dt = 0.01

    def run(model, steps):
        state = x
        _sync(device)
        start = time.perf_counter()
        for k in range(steps):
            state = model.step(k * dt, state, dt, generator)
        _sync(device)
        return time.perf_counter() - start

    with torch.no_grad():
        run(nudged, 1)  # warm-up: kernel spectra and observation fields
        run(base, 1)
        singles = [run(nudged, 1) for _ in range(repeats)]
        plain = run(base, repeats)
        with_nudging = run(nudged, repeats)
    return {"particles": n, "nudged_step_seconds_median": statistics.median(singles),
            "nudged_step_seconds_all": singles, "unnudged_run_seconds": plain, "nudged_run_seconds": with_nudging,
            "run_steps": repeats, "ratio_nudged_to_unnudged": with_nudging / plain, "substeps": nudged.last_substeps}


def grid_versus_pairwise(n):
    from torchmf import systems
    from torchmf.metrics import w2
    from torchmf.nudging import NudgedSDE, ParticleObservations

    times = torch.linspace(0, 0.2, 5, dtype=torch.float64)
    reference = systems.get("ou_linear", a=1.0).simulate(n_particles=n, times=times, seed=0, progress=False)
    biased = systems.get("ou_linear", a=5.0)
    observations = ParticleObservations(reference, interpolation="linear")
    out = {}
    for backend in ("grid", "pairwise"):
        model = NudgedSDE(biased.sde, observations, 0.2, 10.0, backend=backend)
        start = time.perf_counter()
        run = model.simulate(reference.positions[:, 0], times, 0.01, seed=1, progress=False)
        seconds = time.perf_counter() - start
        out[backend] = {"seconds": seconds, "final_w2_to_reference": float(w2(run.positions[0, -1], reference.positions[0, -1])),
                        "run": run, "substeps": model.last_substeps}
    # the un-nudged biased model (the baseline of the accuracy line) and its cost (of the overhead line)
    generator = torch.Generator().manual_seed(1)
    state = reference.positions[:, 0].clone()
    start = time.perf_counter()
    with torch.no_grad():
        for k in range(len(times) - 1):
            for j in range(int(round(float(times[k + 1] - times[k]) / 0.01))):
                state = biased.sde.step(float(times[k]) + 0.01 * j, state, 0.01, generator)
    out["unnudged"] = {"seconds": time.perf_counter() - start,
                       "final_w2_to_reference": float(w2(state[0], reference.positions[0, -1]))}
    distance = float(w2(out["grid"]["run"].positions[0, -1], out["pairwise"]["run"].positions[0, -1]))
    for backend in ("grid", "pairwise"):
        del out[backend]["run"]

    def relative(label):
        return abs(out[label]["final_w2_to_reference"] - out["pairwise"]["final_w2_to_reference"]) / \
            out["pairwise"]["final_w2_to_reference"]

    return {"particles": n, **out, "steps": len(times) - 1, "speedup": out["pairwise"]["seconds"] / out["grid"]["seconds"],
            "w2_relative_difference": relative("grid"), "unnudged_w2_relative_difference": relative("unnudged"),
            "pairwise_over_unnudged_seconds": out["pairwise"]["seconds"] / out["unnudged"]["seconds"],
            "w2_grid_vs_pairwise_runs": distance}


def stiff_strengths(quick: bool):
    """The README's ou_linear example (reference a = 1, biased a = 5, N = 2000, t in [0, 2], dt = 0.01,
    h = 0.2, linear interpolation) at lambda = 0, 1e2, 1e4, 1e6 with the default scheme ("auto":
    explicit up to 100 sub-steps per step, implicit above), and the explicit scheme at lambda = 1e4
    (the old cost; quick: its first 0.2 time units, scaled by 10) and at 1e6 with 4 sub-steps per
    step (the implicit scheme's budget: it must blow up)."""
    import warnings

    from torchmf import systems
    from torchmf.metrics import w2
    from torchmf.nudging import NudgedSDE, ParticleObservations

    reference = systems.get("ou_linear", a=1.0).simulate(n_particles=2000, seed=0, progress=False)
    observations = ParticleObservations(reference, interpolation="linear")
    biased = systems.get("ou_linear", a=5.0)

    def run(strength, **options):
        model = NudgedSDE(biased.sde, observations, bandwidth=0.2, strength=strength, **options)
        times = reference.times
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the explicit scheme's cost notice
            try:
                forecast = model.simulate(reference.positions[:, 0], times, dt=0.01, seed=1, progress=False)
            except ValueError as error:  # an explicit blow-up leaves the grid or turns non-finite
                return {"seconds": time.perf_counter() - start, "finite": False, "error": str(error)[:200]}
        seconds = time.perf_counter() - start
        last = len(times) - 1
        return {"seconds": seconds, "finite": bool(torch.isfinite(forecast.positions).all()),
                "final_w2_to_reference": float(w2(forecast.positions[0, -1], reference.positions[0, last])),
                "scheme": model.last_scheme, "substeps_last_step": model.last_substeps,
                "total_substeps": model.total_substeps}

    out = {label: run(strength) for label, strength in (("lambda=0", 0.0), ("lambda=1e2", 1e2), ("lambda=1e4", 1e4),
                                                       ("lambda=1e6", 1e6))}
    if quick:  # the explicit scheme's cost from its first 20 steps (0.2 of the 2 time units)
        model = NudgedSDE(biased.sde, observations, bandwidth=0.2, strength=1e4, scheme="explicit")
        state, generator = reference.positions[:, 0], torch.Generator().manual_seed(1)
        start = time.perf_counter()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", RuntimeWarning)
            for k in range(20):
                state = model.step(0.01 * k, state, 0.01, generator)
        seconds = time.perf_counter() - start
        explicit = {"seconds": seconds, "steps": 20, "total_substeps": model.total_substeps,
                    "seconds_full_run": seconds * 10}
    else:
        explicit = run(1e4, scheme="explicit")
        explicit["seconds_full_run"] = explicit["seconds"]
    out["lambda=1e4, explicit"] = explicit
    out["lambda=1e6, explicit, 4 sub-steps"] = run(1e6, substeps=4, scheme="explicit")
    return out


def _stiff_checks(report, stiff) -> None:
    report.metrics["stiff_strengths"] = stiff
    moderate, strong, strongest = stiff["lambda=1e2"], stiff["lambda=1e4"], stiff["lambda=1e6"]
    report.check("README ou_linear: wall time lambda = 1e4 / lambda = 1e2 (default scheme)",
                 round(strong["seconds"] / moderate["seconds"], 2), "<= 3", lambda v: v <= 3,
                 baseline=("explicit scheme at lambda = 1e4 (the old cost)",
                           round(stiff["lambda=1e4, explicit"]["seconds_full_run"] / moderate["seconds"], 1)))
    report.check("README ou_linear: final W2 to the reference, lambda = 1e4 minus lambda = 1e2",
                 round(strong["final_w2_to_reference"] - moderate["final_w2_to_reference"], 4), "<= 0",
                 lambda v: v <= 0, baseline=("un-nudged biased model (lambda = 0)", round(
                     stiff["lambda=0"]["final_w2_to_reference"] - moderate["final_w2_to_reference"], 4)))
    report.check("README ou_linear: lambda = 1e6 run finite", strongest["finite"], "true", lambda v: v is True,
                 baseline=("explicit scheme at lambda = 1e6 with the same 4 sub-steps per step",
                           stiff["lambda=1e6, explicit, 4 sub-steps"]["finite"]))
    report.check("README ou_linear (moonshot): wall time lambda = 1e6 / lambda = 1e2",
                 round(strongest["seconds"] / moderate["seconds"], 2), "<= 10", lambda v: v <= 10,
                 baseline=("explicit scheme at lambda = 1e6, extrapolated (sub-steps grow linearly in lambda)",
                           round(100 * stiff["lambda=1e4, explicit"]["seconds_full_run"] / moderate["seconds"], 1)))
    report.check("README ou_linear (moonshot): final W2, lambda = 1e6 minus lambda = 1e2",
                 round(strongest["final_w2_to_reference"] - moderate["final_w2_to_reference"], 4), "<= 0",
                 lambda v: v <= 0, baseline=("un-nudged biased model (lambda = 0)", round(
                     stiff["lambda=0"]["final_w2_to_reference"] - moderate["final_w2_to_reference"], 4)))


def main(argv=None) -> int:
    parser = standard_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--stiff-only", action="store_true", help="only the stiff-nudging runs (writes "
                        "bench_nudging_stiff.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stiff_only:
        report = Report("bench_nudging_stiff", args)
        report.settings.update(threads=torch.get_num_threads())
        _stiff_checks(report, stiff_strengths(args.quick))
        report.write()
        return 0
    report = Report("bench_nudging", args)
    report.settings.update(threads=torch.get_num_threads(), step_particles=1_000_000,
                           pairwise_particles=5000 if args.quick else 20000)
    step = step_timing(1_000_000, "cpu", repeats=3 if args.quick else 5)
    report.metrics["step_cpu"] = step
    comparison = grid_versus_pairwise(report.settings["pairwise_particles"])
    report.metrics["grid_vs_pairwise"] = comparison
    # baselines: the pairwise backend (per-step time extrapolated as N^2 from its measured run; its overhead
    # over the un-nudged model), the pairwise backend timed against itself, and the un-nudged biased model
    pairwise_step = comparison["pairwise"]["seconds"] / comparison["steps"] * (1_000_000 / comparison["particles"]) ** 2
    report.metrics["pairwise_step_seconds_extrapolated_to_1e6"] = pairwise_step
    report.check("one nudged grid step, N = 1e6, 2-D, CPU (median seconds)", round(step["nudged_step_seconds_median"], 3),
                 "< 1.5 s", lambda v: v < 1.5,
                 baseline=(f"pairwise backend, N^2 extrapolation of its measured N = {comparison['particles']} run",
                           round(pairwise_step, 1)))
    report.check("nudged run / same un-nudged run (grid-interaction base, N = 1e6)",
                 round(step["ratio_nudged_to_unnudged"], 3), "<= 2", lambda v: v <= 2,
                 baseline=(f"pairwise nudging / un-nudged run (ou_linear, N = {comparison['particles']})",
                           round(comparison["pairwise_over_unnudged_seconds"], 1)))
    report.check(f"grid vs pairwise speed-up, N = {comparison['particles']}", round(comparison["speedup"], 1), ">= 100",
                 lambda v: v >= 100, baseline=("the pairwise backend itself", round(
                     comparison["pairwise"]["seconds"] / comparison["pairwise"]["seconds"], 1)))
    report.check("grid vs pairwise: final W2 to the reference, relative difference",
                 round(comparison["w2_relative_difference"], 5), "<= 1e-2", lambda v: v <= 1e-2,
                 baseline=("un-nudged biased model (a = 5)", round(comparison["unnudged_w2_relative_difference"], 4)))
    _stiff_checks(report, stiff_strengths(args.quick))
    if torch.cuda.is_available():
        gpu = step_timing(10_000_000, "cuda", repeats=5)
        gpu["device"] = device_name("cuda")
        report.metrics["step_cuda"] = gpu
        cpu_seconds = step["nudged_step_seconds_median"]
        report.check(f"one nudged grid step, N = 1e7, GPU ({gpu['device']}, median seconds)",
                     round(gpu["nudged_step_seconds_median"], 3), f"< the CPU step at N = 1e6 ({cpu_seconds:.3f} s)",
                     lambda v: v < cpu_seconds, baseline=("the CPU step scaled linearly to N = 1e7",
                                                          round(10 * cpu_seconds, 3)))
    else:
        report.check("one nudged grid step, N = 1e7, GPU", None, "< the CPU step at N = 1e6", None,
                     skipped="no CUDA device on this machine (no GPU lent)",
                     baseline=("the CPU step scaled linearly to N = 1e7", None))
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
