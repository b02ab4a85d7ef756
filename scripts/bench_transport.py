"""Transport maps on held-out cloud families, side by side with POT, scipy and geomloss (JSON).

Every figure is measured in this run, on one torch thread, against the exact assignment (POT's
network simplex) and a long converged solve of the other (dense) kernel. Every check carries the
trivial answer computed in the same run (standing still, or the unconverged solver of before) and
that baseline must fail the target. ``--quick`` leaves out the N = 1e4 / 3e4 lines and POT/geomloss at N = 1e4.

    python scripts/bench_transport.py --out runs [--quick]
"""
from __future__ import annotations

import math
import statistics
import time
import warnings

import numpy as np
import torch
from _report import Report, standard_parser
from _transport_robust import first_call_row, offset_rows, record_robust_checks, tie_rows, w2_close_rows

from torchmf.lot import lot_velocity  # noqa: E402
from torchmf.metrics import w2  # noqa: E402
from torchmf.transport import TRANSPORT_CASES, TransportSolver, transport_case, transport_map  # noqa: E402


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - start


def map_error(mapped, x, exact):
    return float((mapped - exact).norm() / (exact - x).norm())


def pot_emd_map(x, y):
    import ot

    cost = ot.dist(x.numpy(), y.numpy())
    plan = ot.emd(np.empty(0), np.empty(0), cost, numItermax=max(100_000, 50 * x.shape[0] ** 2))
    return y[torch.as_tensor(plan.argmax(1))]


def scipy_map(x, y):
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(torch.cdist(x, y).pow(2).numpy())
    return y[torch.as_tensor(cols[rows.argsort()])]


def family_rows(n, backends):
    """Per family: exact references, the default map, every backend and a converged reference."""
    rows = []
    for name in TRANSPORT_CASES:
        x, y = transport_case(name, n, seed=11)
        exact_pot, t_pot = timed(pot_emd_map, x, y)  # first: it pays POT's import, not ours
        exact_ours, t_exact = timed(transport_map, x, y, "exact")
        _, t_scipy = timed(scipy_map, x, y)
        default, t_default = timed(transport_map, x, y)
        reference = TransportSolver("sinkhorn-online", tolerance=1e-4, max_iterations=20_000)
        converged = reference(x, y)
        row = {"family": name, "n": n, "t_scipy_lsa": t_scipy, "t_pot_emd": t_pot, "t_exact": t_exact,
               "exact_same_as_pot": bool(torch.equal(exact_ours, exact_pot)) or
               abs(float((exact_ours - x).pow(2).sum()) - float((exact_pot - x).pow(2).sum())) < 1e-9,
               "t_default": t_default, "error_default": map_error(default, x, exact_ours),
               "error_converged": map_error(converged, x, exact_ours),
               "iterations_converged": reference.last_iterations,
               "error_standing_still": map_error(x, x, exact_ours), "backends": {}}
        for method in backends:
            solver = TransportSolver(method, on_unconverged="ignore")
            mapped, seconds = timed(solver, x, y)
            report = solver.last_report
            row["backends"][method] = {"error": map_error(mapped, x, exact_ours), "seconds": seconds,
                                       "iterations": None if report is None else report.iterations,
                                       "converged": None if report is None else report.converged}
        # the solver before issue 12: 5% mean marginal error, at most 20 final iterations
        old = _old_solver_map(x, y)
        row["error_old_stopping_rule"] = map_error(old, x, exact_ours)
        rows.append(row)
        print(f"{name:22s} default {row['error_default']:.4f} ({t_default:.2f} s) converged "
              f"{row['error_converged']:.4f} scipy {t_scipy:.2f} s POT {t_pot:.2f} s old {row['error_old_stopping_rule']:.3f}",
              flush=True)
    return rows


def _old_solver_map(x, y):
    """geomloss' own loop at scaling 0.7 (one update per level): the unconverged answer of before."""
    return transport_map(x, y, "sinkhorn-geomloss", scaling=0.7)


def w2_rows(n):
    rows = []
    from geomloss import SamplesLoss

    for name in TRANSPORT_CASES:
        x, y = transport_case(name, n, seed=12)
        exact = float(w2(x, y, method="exact"))
        value, seconds = timed(w2, x, y, method="sinkhorn")
        spread = float(torch.cat([x, y]).std(0).max())
        old_loss = SamplesLoss("sinkhorn", p=2, blur=0.01 * spread, scaling=0.7, debias=True, backend="tensorized")
        old = math.sqrt(max(0.0, 2 * float(old_loss(x, y))))
        rows.append({"family": name, "exact": exact, "sinkhorn": float(value), "seconds": seconds,
                     "relative_error": abs(float(value) / exact - 1), "old_relative_error": abs(old / exact - 1)})
        print(f"w2 {name:22s} exact {exact:.4f} sinkhorn {float(value):.4f} old {old:.4f}", flush=True)
    return rows


def gradient_field_case(n, seed, field):
    """A uniform cloud moved by a known gradient field for 7 snapshots, labels shuffled (untracked)."""
    generator = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1
    dt, snapshots, position = 0.02, [], None
    times = [dt * j for j in range(-3, 4)]
    for t in times:
        position = _flow(x, t, field)
        snapshots.append(position[torch.randperm(n, generator=generator)])
    return torch.stack(snapshots), x, field(x), dt


def _flow(x, t, field, steps=200):
    """RK4 flow of ``field`` for time ``t`` (either sign)."""
    h, state = t / steps, x.clone()
    for _ in range(steps):
        k1 = field(state)
        k2 = field(state + 0.5 * h * k1)
        k3 = field(state + 0.5 * h * k2)
        k4 = field(state + h * k3)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state


GRADIENT_FIELDS = {
    # v = grad phi: what a Wasserstein tangent vector can see
    "quadratic_stretch": lambda x: x * torch.tensor([1.0, -0.5], dtype=x.dtype),
    "sine_potential": lambda x: torch.stack([torch.cos(2 * x[:, 0]) * torch.sin(x[:, 1]),
                                             0.5 * torch.sin(2 * x[:, 0]) * torch.cos(x[:, 1])], 1),
    "radial_cubic": lambda x: x * x.pow(2).sum(1, keepdim=True),
}


def lot_rows(n):
    rows = []
    for index, (name, field) in enumerate(GRADIENT_FIELDS.items()):
        snapshots, _, _, dt = gradient_field_case(n, 20 + index, field)
        centre = snapshots[3]
        truth = field(centre)
        norm = float(truth.norm())
        default, seconds = timed(lot_velocity, snapshots, dt)
        exact = lot_velocity(snapshots, dt, method="exact")
        rows.append({"field": name, "n": n, "seconds_default": seconds,
                     "error_default": float((default - truth).norm()) / norm,
                     "error_exact": float((exact - truth).norm()) / norm, "error_standing_still": 1.0})
        print(f"lot {name:18s} default {rows[-1]['error_default']:.4f} exact {rows[-1]['error_exact']:.4f}", flush=True)
    return rows


_POT_BUDGET = 12  # POT runs for at most this many times our time: beyond it, the 0.1x line holds whatever it does


def pot_time_to_accuracy(x, y, blur, reference, target, budget):
    """POT's log-domain Sinkhorn (reg = 2 blur^2, the same plan as ours): the shortest run, in
    iterations, whose map error reaches ``target``, searched by halving from the number of
    iterations that fits in ``budget`` seconds (timed on a short run first). If even that run stays
    above the target, POT's time to our accuracy is more than ``budget``: the row says so."""
    import ot

    cost = ot.dist(x.numpy(), y.numpy())

    def run(iterations):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT warns that it stopped at numItermax: that is the point
            plan = ot.sinkhorn(np.empty(0), np.empty(0), cost, reg=2 * blur ** 2, method="sinkhorn_log",
                               numItermax=iterations, stopThr=0.0)
        seconds = time.perf_counter() - start
        mapped = torch.as_tensor(plan @ y.numpy() / plan.sum(1, keepdims=True))
        return {"iterations": iterations, "seconds": seconds, "error": map_error(mapped, x, reference)}

    # seconds per iteration from two short runs (one alone also counts POT's set-up, and the
    # budget then bought too few iterations: 36 in 196 s against a 265 s budget at N = 1e4)
    short, longer = run(3), run(8)
    per_iteration = max((longer["seconds"] - short["seconds"]) / 5, 1e-9)
    iterations = max(5, int((budget - short["seconds"]) / per_iteration) + 3)
    attempts = [run(iterations)]
    while attempts[-1]["error"] > 1.05 * target and attempts[-1]["seconds"] < budget and len(attempts) < 3:
        # still short of the budget and of our accuracy: run longer, so "not reached" means "not in budget"
        attempts.append(run(int(attempts[-1]["iterations"] * 1.1 * budget / attempts[-1]["seconds"]) + 1))
    longest = attempts[-1]
    while attempts[-1]["error"] <= 1.05 * target and attempts[-1]["iterations"] > 10 and len(attempts) < 6:
        attempts.append(run(attempts[-1]["iterations"] // 2))  # reached: the shortest run that still does
    reached = [a for a in attempts if a["error"] <= 1.05 * target]
    best = min(reached, key=lambda a: a["seconds"]) if reached else longest
    return {**best, "reached": bool(reached), "budget_seconds": budget, "attempts": attempts}


def peer_rows(sizes, quick):
    """Time to equal accuracy: ours (default settings) against geomloss tensorized with its scaling
    raised until it matches our map error, and POT's log-domain Sinkhorn at reg = 2 blur^2."""
    from geomloss import SamplesLoss

    from torchmf.transport import default_blur
    from torchmf.transport.kernels import DenseKernel, centred, uniform_log

    rows = []
    for n in sizes:
        x, y = transport_case("square_to_banana", n, seed=13)
        exact = None if n > 10_000 else transport_map(x, y, "exact")
        ours, t_ours = timed(TransportSolver("sinkhorn", debias=False), x, y)
        reference = exact if exact is not None else TransportSolver(
            "sinkhorn-multiscale", debias=False, tolerance=1e-5, max_iterations=20_000)(x, y)
        target = map_error(ours, x, reference) if exact is not None else None
        row = {"n": n, "t_ours": t_ours, "error_ours": target, "geomloss": [], "pot": None}
        blur = default_blur(x, y)
        if n * n * 8 * 3 < 6e9:
            for scaling in (0.7, 0.9, 0.95, 0.98, 0.99, 0.995):
                if row["geomloss"] and row["geomloss"][-1]["seconds"] > 60:
                    row["geomloss_stopped"] = "the last attempt took over a minute; finer scalings take longer"
                    break
                loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, potentials=True,
                                   backend="tensorized")
                wx, wy, shift = centred(x, y)
                (_, g), seconds = timed(loss, wx, wy)
                mapped = DenseKernel(wx, wy).barycentre(blur ** 2, uniform_log(wy) + g.reshape(-1) / blur ** 2,
                                                        wy) + shift
                error = map_error(mapped, x, reference)
                row["geomloss"].append({"scaling": scaling, "seconds": seconds, "error": error})
                if target is not None and error <= 1.05 * target:
                    break
        else:
            row["geomloss_limit"] = "the N x N float64 matrices do not fit in this machine's memory"
        row["pot"] = pot_time_to_accuracy(x, y, blur, reference, target, budget=_POT_BUDGET * t_ours)
        rows.append(row)
        print(f"peers n={n} ours {t_ours:.2f} s error {target} geomloss {row['geomloss'][-1:]} pot {row['pot']}",
              flush=True)
    return rows


def record_checks(report, families, w2s, lots, peers, large):
    def at_most(limit):
        return lambda value: value is not None and value <= limit

    if families:
        ratio = lambda row, key: row[key] / max(row["error_converged"], 1e-12)  # noqa: E731
        report.check("default map error / converged solve at the same blur (worst family)",
                     max(ratio(r, "error_default") for r in families), "<= 1.25", at_most(1.25),
                     baseline=("solver before issue 12 (geomloss loop, scaling 0.7)",
                               max(ratio(r, "error_old_stopping_rule") for r in families)))
        report.check("default map error to the exact assignment (worst family)",
                     max(r["error_default"] for r in families), "<= 0.10", at_most(0.10),
                     baseline=("standing still", min(r["error_standing_still"] for r in families)))
        # Issue 26 re-derived these two from quick runs with the peers beside them (N = 2,000, one
        # thread, load 5-11): scipy's time swings 40x between families (0.71 s heavy to disk, 26.7 s
        # affine), so the peer is POT's network simplex (0.73-1.49 s; 5.9 s once under a load spike).
        # Measured in three runs: default (exact) worst 0.48x, 0.54x, 0.64x ot.emd; a converged 'sinkhorn'
        # map worst 3.1x, 6.6x, 5.1x (heavy to disk 2.3-3.8 s against 0.6-0.7 s; the load moved single
        # families 2x), median family 1.5x and 1.8x against scipy's median 4.7x and 5.3x: on CPU at this
        # size the exact map is the cheaper one, which is why "auto" picks it.
        report.check("default map time / ot.emd (worst family)",
                     max(r["t_default"] / r["t_pot_emd"] for r in families), "<= 1", at_most(1.0),
                     baseline=("scipy linear_sum_assignment / ot.emd (the exact backend before)",
                               max(r["t_scipy_lsa"] / r["t_pot_emd"] for r in families)))
        report.check("default 'sinkhorn' map time / ot.emd (median family)",
                     statistics.median(r["backends"]["sinkhorn"]["seconds"] / r["t_pot_emd"] for r in families),
                     "<= 3", at_most(3.0), baseline=("scipy linear_sum_assignment / ot.emd (median family)",
                                                     statistics.median(r["t_scipy_lsa"] / r["t_pot_emd"]
                                                                       for r in families)))
        report.check("method='exact' time / ot.emd (worst family)", max(r["t_exact"] / r["t_pot_emd"] for r in families),
                     "<= 1.5", at_most(1.5),
                     baseline=("scipy linear_sum_assignment / ot.emd (the exact backend before)",
                               max(r["t_scipy_lsa"] / r["t_pot_emd"] for r in families)))
    if w2s:
        report.check("w2(method='sinkhorn') relative error to exact W2 (worst family)",
                     max(r["relative_error"] for r in w2s), "<= 0.02", at_most(0.02),
                     baseline=("geomloss debiased divergence, blur 1%, scaling 0.7 (before)",
                               max(r["old_relative_error"] for r in w2s)))
    if lots:
        exact_error = max(r["error_exact"] for r in lots)
        limit = min(0.03, 2 * exact_error)
        report.check("lot_velocity default error to the true gradient field (worst field)",
                     max(r["error_default"] for r in lots), f"<= min(3%, 2 x exact maps' {exact_error:.4f})",
                     at_most(limit), baseline=("standing still (zero velocity)", 1.0))
    for row in large:
        if "error_reference" not in row:  # beyond the exact limit: figures, no acceptance line
            continue
        report.check(f"N = {row['n']}: default map time (s, one thread)", row["t_default"], "<= 10", at_most(10.0),
                     baseline=("POT ot.emd (s)", row["t_pot_emd"]))
        report.check(f"N = {row['n']}: default map error / converged reference",
                     row["error_default"] / row["error_reference"], "<= 1.25", at_most(1.25),
                     baseline=("standing still", row["error_standing_still"] / row["error_reference"]))
    for row in peers:
        matched = [g for g in row["geomloss"] if row["error_ours"] is not None and g["error"] <= 1.05 * row["error_ours"]]
        if matched or row["geomloss"]:
            # if geomloss never reached our accuracy, its most accurate attempt (a lower bound on its time)
            chosen = matched[0] if matched else row["geomloss"][-1]
            label = "at equal accuracy" if matched else f"(its best, error {chosen['error']:.4f}, still above ours)"
            report.check(f"N = {row['n']}: time / geomloss tensorized {label}", row["t_ours"] / chosen["seconds"],
                         "<= 0.5", at_most(0.5), baseline=("geomloss itself", 1.0))
        if row["pot"] is not None:
            pot = row["pot"]
            # not reached within its budget: its time to our accuracy exceeds the budget (an upper bound on the ratio)
            label = "at equal accuracy" if pot["reached"] else (
                f"(not reached in {pot['iterations']} iterations, {pot['seconds']:.0f} s: error {pot['error']:.4f})")
            report.check(f"N = {row['n']}: time / POT log-domain Sinkhorn (reg = 2 blur^2) {label}",
                         row["t_ours"] / pot["seconds"], "<= 0.1", at_most(0.1), baseline=("POT itself", 1.0))
    report.check("GPU: N = 1e5 converged-quality map (s)", None, "< 1", None,
                 skipped="no GPU was lent to this task", baseline=("none", None))


def large_rows(sizes):
    """Default map, exact assignment (ours, sparse and certified) and POT's network simplex at large N.

    Up to N = 10,000 the default is the exact assignment; its error is scored against a long converged
    Sinkhorn solve at the same blur too (the acceptance line's reference). Beyond, the default is the
    converged Sinkhorn map and the exact assignment is the reference."""
    rows = []
    for n in sizes:
        x, y = transport_case("mixture_to_ring", n, seed=14)
        default, seconds = timed(transport_map, x, y)
        exact, t_exact = timed(transport_map, x, y, "exact")
        solver = TransportSolver("sinkhorn", debias=False)
        converged, t_sinkhorn = timed(solver, x, y)
        row = {"n": n, "t_default": seconds, "t_exact": t_exact, "error_default": map_error(default, x, exact),
               "error_standing_still": map_error(x, x, exact), "t_sinkhorn": t_sinkhorn,
               "error_sinkhorn": map_error(converged, x, exact), "sinkhorn_report": list(solver.last_report)}
        if n <= 10_000:
            reference = TransportSolver("sinkhorn-multiscale", tolerance=1e-4, max_iterations=20_000)(x, y)
            row["error_reference"] = max(map_error(reference, x, exact), 1e-12)
            # POT's dense network simplex: two N x N float64 arrays (1.6 GB at N = 1e4)
            pot, row["t_pot_emd"] = timed(pot_emd_map, x, y)
            row["exact_same_as_pot"] = abs(float((exact - x).pow(2).sum()) - float((pot - x).pow(2).sum())) < 1e-9 * n
        rows.append(row)
        print(f"large n={n}: default {seconds:.2f} s error {row['error_default']:.4f}, exact {t_exact:.2f} s, "
              f"POT {row.get('t_pot_emd')}, 'sinkhorn' {t_sinkhorn:.2f} s error {row['error_sinkhorn']:.4f}", flush=True)
    return rows


def cross_to_spiral(n, seed=99):
    """The held-out pair (not in ``TRANSPORT_CASES``): two uniform bars in a cross to a noisy spiral."""
    generator = torch.Generator().manual_seed(seed)
    turn = 4 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    spiral = torch.stack([turn * torch.cos(turn), turn * torch.sin(turn)], 1) / 6
    spiral = spiral + 0.05 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    cross = torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 0.3], dtype=torch.float64)
    cross[n // 2:] = cross[n // 2:].flip(1)
    first = (torch.arange(n) < n // 2).unsqueeze(1)
    cross = cross - 1.5 * torch.tensor([1.0, 0.0]) * first - 1.5 * torch.tensor([0.0, 1.0]) * ~first
    return cross, spiral


def scale_family_rows(n):
    """``"sinkhorn"`` (the sparse kernel at this size) on every family and the held-out pair, against
    the dense (untruncated) kernel converged to 1e-3 at the same blur; errors to the exact map.
    The dense references take up to 7 minutes each at N = 1e4: not in the default sections."""
    rows = []
    pairs = {name: transport_case(name, n, seed=21) for name in TRANSPORT_CASES}
    pairs["cross_to_spiral (held out)"] = cross_to_spiral(n)
    for name, (x, y) in pairs.items():
        exact = transport_map(x, y, "exact")
        solver = TransportSolver("sinkhorn", debias=False)
        ours, seconds = timed(solver, x, y)
        dense = TransportSolver("sinkhorn-online", debias=False, tolerance=1e-3, max_iterations=20_000)
        reference, t_dense = timed(dense, x, y)
        row = {"family": name, "n": n, "t_sinkhorn": seconds, "error_sinkhorn": map_error(ours, x, exact),
               "t_dense": t_dense, "error_dense": map_error(reference, x, exact),
               "error_standing_still": 1.0, "report": list(solver.last_report)}
        rows.append(row)
        print(f"scale {name:28s} sinkhorn {row['error_sinkhorn']:.4f} ({seconds:.1f} s) dense {row['error_dense']:.4f} "
              f"({t_dense:.0f} s)", flush=True)
    return rows


_SECTIONS = ("families", "w2", "lot", "large", "peers", "scale_families", "robust")


def main(argv=None):
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="no N = 1e4 lines (they take minutes)")
    parser.add_argument("--sections", default="families,w2,lot,large,peers,robust",
                        help="comma-separated subset of families,w2,lot,large,peers,scale_families,robust "
                             "(scale_families, N = 1e4 against the dense kernel, takes about 30 minutes and is not in "
                             "the default; robust: ties, offsets, W2 on close pairs, the first call)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    unknown = sections - set(_SECTIONS)
    if unknown:
        parser.error(f"--sections: expected names from {','.join(_SECTIONS)}, but got {','.join(sorted(unknown))}")
    torch.set_num_threads(args.threads)
    report = Report("bench_transport", args)
    n = 2000  # the acceptance size, quick or not (about 3 minutes)
    report.settings.update({"threads": args.threads, "n_families": n})
    backends = ["sinkhorn-online", "sinkhorn-multiscale", "sinkhorn-geomloss", "sinkhorn", "auto"]
    families = report.metrics["families"] = family_rows(n, backends) if "families" in sections else []
    w2s = report.metrics["w2"] = w2_rows(n) if "w2" in sections else []
    lots = report.metrics["lot"] = lot_rows(1000) if "lot" in sections else []
    report.write()  # partial results survive an interrupted run
    large_sizes = [] if args.quick or args.skip_large or "large" not in sections else [10_000, 30_000]
    large = report.metrics["large"] = large_rows(large_sizes)
    report.write()
    peer_sizes = [1000] if args.quick or args.skip_large else [1000, 10_000]
    peers = report.metrics["peers"] = peer_rows(peer_sizes if "peers" in sections else [], args.quick)
    scale = report.metrics["scale_families"] = scale_family_rows(10_000) if "scale_families" in sections else []
    record_checks(report, families, w2s, lots, peers, large)
    if "robust" in sections:
        ties, offsets = tie_rows(args.quick), offset_rows()
        closes, first = w2_close_rows(), first_call_row()
        report.metrics["robust"] = {"ties": ties, "offsets": offsets, "w2_close": closes, "first_call": first}
        record_robust_checks(report, ties, offsets, closes, first)
    if scale:
        report.check("N = 1e4: 'sinkhorn' map error / dense converged map's, worst of 9 pairs",
                     max(r["error_sinkhorn"] / r["error_dense"] for r in scale), "<= 1.25",
                     lambda value: value <= 1.25,
                     baseline=("standing still", max(1.0 / r["error_dense"] for r in scale)))
    report.write()


if __name__ == "__main__":
    main()
