"""Issue 26, item 5: the certified exact assignment at N = 1e5 on one CPU thread, peak memory stated.

Three parts, in this order, in one process (one torch thread, address space capped):

1. **The solve.** ``normalised`` then the certified sparse assignment (what ``sparse_assignment``
   runs) at ``--n`` points of a ``torchmf.transport.cases`` family: seconds, pricing rounds, and the
   peak resident memory right after it (before anything else is allocated).
2. **An independent check of the certificate** over all ``N^2`` pairs, in dense row tiles (the
   solver itself never forms them all): the largest violation ``max(f_i + g_j - |x_i - y_j|^2)``
   and the duality gap. ``primal - dual + N * max(violation, 0)`` bounds the excess cost over the
   optimum (weak duality), so it is the certified suboptimality, judged against the trivial answer
   (the identity pairing) under the same dual bound.
3. **A reference at a size a dense solver can run** (``--reference-n``): the public
   ``sparse_assignment`` against POT's network simplex ``ot.emd`` on the dense cost, costs and
   seconds side by side (at N = 2e4 ``ot.emd`` threw ``std::bad_alloc`` under the 12 GB cap, and
   scipy's ``linear_sum_assignment`` had not finished after about 8 minutes CPU: 1e4 by default).

    python scripts/bench_assignment_1e5.py --out runs/assignment_1e5 [--n 100000] [--reference-n 10000]
    python scripts/bench_assignment_1e5.py --quick     # N = 2e4, reference 3e3
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf.transport.atoms import normalised  # noqa: E402
from torchmf.transport.cases import transport_case  # noqa: E402
from torchmf.transport.sparse_assignment import _certified, sparse_assignment  # noqa: E402

_CHECK_TILE = 2 ** 22  # pairs per tile of the independent all-pairs check (32 MB in float64)


def peak_rss_gb() -> float:
    """Peak resident set of this process so far, GB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def cpu_seconds() -> float:
    return time.process_time()


def all_pairs_violation(x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> float:
    """``max_ij f_i + g_j - |x_i - y_j|^2`` over all pairs, in row tiles by the direct formula."""
    worst = -float("inf")
    step = max(1, _CHECK_TILE // y.shape[0])
    for start in range(0, x.shape[0], step):
        tile = torch.cdist(x[start:start + step], y, compute_mode="donot_use_mm_for_euclid_dist").pow_(2)
        tile -= f[start:start + step, None]
        tile -= g[None, :]
        worst = max(worst, -float(tile.min()))
    return worst


def _coarse_violation(source: torch.Tensor, target: torch.Tensor) -> float:
    """Largest violation of the solve's starting (coarse) potentials, on every 100th row."""
    from torchmf.transport.sparse_assignment import _coarse_potentials

    f, g = _coarse_potentials(source, target)
    rows = torch.arange(0, source.shape[0], 100)
    return all_pairs_violation(source[rows], target, f[rows], g)


def solve_at_scale(report: Report, n: int, family: str, seed: int, full_check: bool) -> None:
    x, y = transport_case(family, n, seed=seed)
    start_rss = peak_rss_gb()
    wall, cpu = time.perf_counter(), cpu_seconds()
    source, target, _, _ = normalised(x, y)
    solved = _certified(source, target)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    solve_rss = peak_rss_gb()
    metrics = report.metrics.setdefault("solve", {})
    metrics.update({"n": n, "family": family, "seed": seed, "seconds": wall, "cpu_seconds": cpu,
                    "peak_rss_gb_after_solve": solve_rss, "peak_rss_gb_before_solve": start_rss,
                    "certified": solved is not None})
    print(f"N = {n}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {solve_rss:.2f} GB "
          f"(before the solve {start_rss:.2f} GB), certified {solved is not None}", flush=True)
    report.check(f"peak resident memory of the solve, N = {n} (GB)", solve_rss, "<= 2",
                 lambda v: v <= 2, baseline=("the dense N x N float64 cost matrix alone", 8.0 * n * n / 1e9))
    if solved is None:
        report.check(f"certified exact assignment, N = {n}, one thread: seconds", None, "<= 600",
                     lambda v: v <= 600, baseline=("no certificate", None))
        return
    partner, rounds, f, g, tolerance = solved
    partner_t = torch.as_tensor(partner)
    primal = float((source - target[partner_t]).pow(2).sum(1).sum())
    identity = float((source - target).pow(2).sum(1).sum())
    dual = float(f.sum() + g.sum())
    metrics.update({"rounds": rounds, "tolerance": tolerance, "primal": primal / n, "dual": dual / n,
                    "identity_pairing_cost": identity / n,
                    "permutation": bool(np.array_equal(np.sort(partner), np.arange(n)))})
    if not full_check:
        report.check(f"certified exact assignment, N = {n}, one thread: seconds", wall, "<= 600",
                     lambda v: v <= 600, baseline=("solver of before at N = 1e5 (recorded 2026-12-06): killed by "
                                                   "the OOM killer at 24.4 GB after about 540 s", None, False),
                     skipped="--no-full-check: the certificate was not checked over all pairs")
        return
    check_seconds = time.perf_counter()
    violation = all_pairs_violation(source, target, f, g)
    check_seconds = time.perf_counter() - check_seconds
    bound = (primal - dual + n * max(violation, 0.0)) / primal
    baseline_bound = (identity - dual + n * max(violation, 0.0)) / identity
    metrics.update({"max_violation": violation, "check_seconds": check_seconds, "gap_bound": bound})
    print(f"all {n}^2 pairs checked in {check_seconds:.1f} s: max violation {violation:.3g} (tolerance "
          f"{tolerance:.3g}), certified relative suboptimality <= {bound:.3g}", flush=True)
    # the solver of before formed all N^2 pairs in every pass; at N = 1e5 it was killed by the OOM
    # killer (recorded, docs/benchmarks.md); the dense solvers need two N x N float64 arrays
    report.check(f"certified exact assignment, N = {n}, one thread: seconds", wall, "<= 600",
                 lambda v: v <= 600, baseline=("solver of before at N = 1e5 (recorded 2026-12-06): killed by the OOM "
                                               "killer at 24.4 GB after about 540 s, no certificate", None, False),
                 skipped=None if n >= 100_000 else "the 600 s target is the issue's line for N = 1e5")
    metrics["all_pairs_pass_seconds"] = check_seconds
    coarse_violation = _coarse_violation(source, target)
    metrics["coarse_potentials_sampled_violation"] = coarse_violation
    report.check(f"largest violation of the dual certificate over all {n}^2 pairs / its tolerance",
                 violation / tolerance, "<= 1", lambda v: v <= 1,
                 baseline=("the coarse potentials the solve starts from (every 100th row, all columns)",
                           coarse_violation / tolerance))
    report.check("certified relative suboptimality (primal - dual + N max violation) / primal", bound,
                 "<= 1e-6", lambda v: v <= 1e-6, baseline=("identity pairing, same dual bound", baseline_bound))


def against_reference(report: Report, n: int, family: str, seed: int) -> None:
    import ot  # imported before any timing

    x, y = transport_case(family, n, seed=seed)
    source, target = x.numpy(), y.numpy()
    wall = time.perf_counter()
    partner, rounds = sparse_assignment(source, target)
    ours = time.perf_counter() - wall
    wall = time.perf_counter()
    plan = ot.emd(np.empty(0), np.empty(0), ot.dist(source, target, metric="sqeuclidean"),
                  numItermax=max(100_000, 50 * n * n))
    reference = plan.argmax(axis=1)
    del plan
    theirs = time.perf_counter() - wall
    optimum = float(((source - target[reference]) ** 2).sum(1).mean())
    cost = float(((source - target[partner]) ** 2).sum(1).mean())
    identity = float(((source - target) ** 2).sum(1).mean())
    report.metrics["reference"] = {"n": n, "family": family, "seconds": ours, "rounds": rounds,
                                   "ot_emd_seconds": theirs, "cost": cost, "ot_emd_cost": optimum,
                                   "rows_differing": int((partner != reference).sum())}
    print(f"reference N = {n}: ours {ours:.1f} s (cost {cost:.12g}), POT's ot.emd {theirs:.1f} s "
          f"(cost {optimum:.12g})", flush=True)
    report.check(f"relative cost difference to POT's ot.emd (network simplex), N = {n}", abs(cost - optimum) / optimum,
                 "<= 1e-9", lambda v: v <= 1e-9,
                 baseline=("identity pairing", abs(identity - optimum) / optimum))


def main(argv=None) -> None:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="size of the certified solve (default 1e5; quick 2e4)")
    parser.add_argument("--reference-n", type=int, default=None,
                        help="size of the ot.emd comparison (default 1e4; quick 3e3; 0 skips it)")
    parser.add_argument("--family", default="affine_gaussian", help="torchmf.transport.cases family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gb", type=float, default=12.0, help="address-space cap of this process")
    parser.add_argument("--no-full-check", action="store_true", help="skip the all-pairs check of the certificate")
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (20_000 if args.quick else 100_000)
    reference_n = args.reference_n if args.reference_n is not None else (3_000 if args.quick else 10_000)
    if n < 2 or reference_n < 0:
        raise SystemExit(f"--n: expected >= 2, got {n}; --reference-n: expected >= 0, got {reference_n}")
    cap = int(args.memory_gb * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # an overrun fails here alone, not a colleague's job
    torch.set_num_threads(1)
    report = Report("bench_assignment_1e5", args, device="cpu")
    report.settings.update({"n": n, "reference_n": reference_n, "family": args.family, "seed": args.seed,
                            "memory_cap_gb": args.memory_gb, "threads": torch.get_num_threads()})
    solve_at_scale(report, n, args.family, args.seed, not args.no_full_check)
    if reference_n:
        against_reference(report, reference_n, args.family, args.seed + 1)
    report.write()


if __name__ == "__main__":
    main()
