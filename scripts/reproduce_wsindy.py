"""Reproduce sections 5.1-5.3 of the WSINDy-for-particle-systems paper (TPR and error tables, O(N^-1/2) plot).

Examples:
    python scripts/reproduce_wsindy.py --quick --out runs/
    python scripts/reproduce_wsindy.py --out runs/          # full size, 20 seeds per setting
    python scripts/reproduce_wsindy.py --conformance --authors-code DIR --out runs/   # next to the authors' code
    python scripts/reproduce_wsindy.py --only heldout --out runs/                     # systems outside the paper

Each seed is one independent experiment set; the seeds of a setting are simulated together as a
batch of independent ensembles (one tensor ``(seeds * M, N, d)``) and identified one by one with the
paper's library (Tables 2-4) and test functions (Table 5). Writes OUT/reproduce_wsindy.json and
OUT/wsindy_convergence.png, OUT/wsindy_errors.png.

Simulation choices (documented deviations from the paper, for a 2-core CPU):
- QANR 1-D: Euler step 1e-3 and records every 0.01 to t = 1, as in the paper; the initial mixture is
  the system's default (centres 0, 1.25, 4; spread 0.05, like the authors' published dataset).
  Extrinsic noise: std eps times the RMS of each experiment over all times (the authors' generator);
  the per-time RMS variant is recorded too. Constant sigma: NM = 16,000 (metrics) and 32,000 (the
  check), M = 1. Convergence: 20 seeds per N = 4k..128k, median error of the seeds with TPR = 1,
  slope fitted over the sizes where at least half the seeds have TPR = 1.
- Local 2-D: Euler step 2e-3 (omega = 1, instead of 1e-4) and 1e-4 (omega = 20, as in the paper; --quick:
  4e-3 and 1e-3, which overestimates the homogenized diffusivity by several percent); N = 16,384 for
  both omegas (--quick: 4096 and 1024).
- Keller-Segel 2-D: the exact dense O(N^2) force; sigma = 0: M = 2 experiments of N = 800, Euler step
  0.1 (the contraction rate of the disk is 1/(8 pi) per unit time); sigma = 1/sqrt(4 pi): 4 seeds of
  M = 4 x N = 1000, step 0.05 (metrics only); records every 0.1 to t = 8.

Identification uses ``identify``'s defaults (constrained MSTLS: the constant diffusion is exempt from
thresholding and kept >= 0), so on data without diffusion the TPR counts the drift terms and the
kept D:x^0 is reported beside it.

``--conformance`` (issue 16): the authors' file ``qanr1D_N2000_nu0.mat`` without noise and with the
livescript's noise 10^-1.5 over ``--seeds`` draws, and simulated QANR with sigma = sqrt(2) 0.1
(N = 16,000), identified by torchmf's default call and -- when ``octave-cli`` is installed and
``--authors-code`` (or $WSINDY_AUTHORS_CODE) holds a copy of MathBioCU/WSINDy_IPS -- by the authors'
pipeline (``../shared/tools/wsindy-authors/run.sh``, leanest variant) on the same files. Errors:
grad K relative l2 on x in [-2, 2] (801 points). Their noise generator draws its own numbers: the
comparison is of medians. Also: the timing of ``identify`` against their leanest time, and 5
identical runs (threshold and coefficients bit-identical).
``--only heldout``: the systems of :mod:`torchmf.wsindy.heldout` at N x M = 64,000 with the default
library, TPR and bootstrap inclusion probabilities (20 resamples).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf import systems, wsindy  # noqa: E402
from torchmf.data import Trajectories  # noqa: E402
from torchmf.wsindy.library import load_library  # noqa: E402
from torchmf.plots import line_plot  # noqa: E402

SQRT2 = math.sqrt(2.0)


def batch(system, n_particles, seeds, experiments, dt, seed, t_end=None, progress=False):
    """Simulate ``seeds * experiments`` ensembles at once; return a list of Trajectories (one per seed)."""
    data = system.simulate(n_particles=n_particles, n_experiments=seeds * experiments, dt=dt, seed=seed,
                           t_end=t_end, progress=progress, dtype=torch.float64)
    positions = data.positions.reshape(seeds, experiments, *data.positions.shape[1:])
    return [Trajectories(positions[s], data.times, data.meta) for s in range(seeds)]


BASELINE = "least squares on the full library (no thresholding)"


def least_squares_model(model):
    """The trivial baseline of every check: the unthresholded least-squares fit w^0 of the same G and b."""
    return wsindy.WSINDyModel(model.library, torch.tensor(model.info["least_squares"], dtype=torch.float64),
                              model.grid, {})


DRIFT = ("interaction", "local")  # TPR of sigma = 0 data: the constrained default keeps D:x^0 >= 0 (nuisance)


def score(model, true, kinds=None):
    """Scores of ``model`` and, under ``baseline_*`` keys, of the least-squares fit on the full library.
    ``kinds``: the parts the TPR counts (``DRIFT`` for data without diffusion, see ``wsindy.tpr``)."""
    scores = {"tpr": wsindy.tpr(model, true.terms, kinds), "selected": model.selected}
    scores.update({f"error_{k}": v for k, v in wsindy.relative_errors(model, true).items()})
    baseline = least_squares_model(model)
    scores["baseline_tpr"] = wsindy.tpr(baseline, true.terms, kinds)
    scores.update({f"baseline_error_{k}": v for k, v in wsindy.relative_errors(baseline, true).items()})
    return scores


def baseline_rows(rows):
    """The baseline's scores as rows of the same form (``tpr``, ``error_*``)."""
    return [{key[len("baseline_"):]: value for key, value in r.items() if key.startswith("baseline_")} for r in rows]


def summarize(rows, keys):
    out = {"seeds": len(rows), "tpr_mean": float(np.mean([r["tpr"] for r in rows])),
           "tpr_one": int(sum(r["tpr"] == 1.0 for r in rows))}
    for key in keys:
        values = [r[key] for r in rows if r["tpr"] == 1.0 and key in r]
        out[f"{key}_median"] = float(np.median(values)) if values else None
        out[f"{key}_max"] = float(np.max(values)) if values else None
    return out


def qanr(report, quick, seeds, progress):
    metrics = report.metrics.setdefault("qanr_1d", {})
    true_noiseless = wsindy.TrueModel({"K:|x|^1": -1.0, "K:|x|^2": 0.5}, grad_K=lambda x: x - torch.sign(x))
    # 5.2 (a): sigma = 0 with extrinsic noise, N = 8000, M = 1
    n = 8000
    system = systems.get("qanr_1d", diffusion="none")
    started = time.perf_counter()
    runs = batch(system, n, seeds, 1, 1e-3, seed=1)
    metrics["simulate_seconds_sigma0"] = time.perf_counter() - started
    tolerance = 0.01
    passes, baseline_passes = {}, {}
    # noise scale: the RMS of each experiment over all times (the authors' generator; the check). The
    # literal per-time reading ||X_t||_RMS is recorded as well (metrics only): its time-varying level
    # acts as an extra (negative) diffusion, see add_measurement_noise.
    for per_time in (False, True):
        for eps in (0.01, 0.0316, 0.1):
            rows = []
            for s, data in enumerate(runs):
                noisy = wsindy.add_measurement_noise(data, eps, seed=1000 + s, per_time=per_time)
                model = wsindy.identify(noisy, "qanr_1d", test_functions="qanr_1d")
                rows.append(dict(score(model, true_noiseless, DRIFT), D=model.selected.get("D:x^0", 0.0)))
            good = sum(r["tpr"] == 1.0 and r["error_K"] < tolerance for r in rows)
            key = f"sigma0_eps{eps}" + ("_per_time_rms" if per_time else "")
            metrics[key] = dict(summarize(rows, ["error_K", "D"]), good=good, N=n, M=1,
                                selected_when_tpr_below_1=[r["selected"] for r in rows if r["tpr"] < 1][:3])
            if not per_time:
                passes[eps] = good
                baseline_passes[eps] = sum(r["tpr"] == 1.0 and r["error_K"] < tolerance for r in baseline_rows(rows))
            print(f"QANR sigma=0 eps={eps} (per-time RMS: {per_time}): TPR=1 and err_K<{tolerance}: {good}/{len(rows)}",
                  flush=True)
    need = seeds - max(1, seeds // 20)
    worst = min(passes[e] for e in (0.01, 0.0316, 0.1))
    report.check(f"QANR sigma=0, eps<=0.1, N={n}, M=1: TPR=1 (drift terms; D:x^0 >= 0 kept) and rel. error K<{tolerance:.0%}",
                 {str(e): f"{passes[e]}/{seeds}" for e in (0.01, 0.0316, 0.1)},
                 f">= {need}/{seeds} seeds for every eps in (0.01, 0.0316, 0.1)", worst >= need,
                 baseline=(BASELINE, {str(e): f"{baseline_passes[e]}/{seeds}" for e in (0.01, 0.0316, 0.1)},
                           min(baseline_passes.values()) >= need))

    # 5.2 (b): constant diffusivity, NM >= 16,000
    sigma_value = SQRT2 * 0.1
    true_constant = wsindy.TrueModel({"K:|x|^1": -1.0, "K:|x|^2": 0.5, "D:x^0": sigma_value ** 2 / 2},
                                     grad_K=lambda x: x - torch.sign(x), sigma=lambda x: torch.full_like(x, sigma_value))
    # NM = 16,000 (the paper's threshold) and NM = 32,000 (the check: the line asks NM >= 16,000);
    # the sigma error is variance-dominated (sd of D about 1.9% at 16,000 and 1.5% at 32,000)
    system = systems.get("qanr_1d", diffusion="constant")
    tolerance_c = 0.03 if quick else 0.01
    for n, key in (((4000, "constant_sigma_small"), (8000, "constant_sigma")) if quick else
                   ((16000, "constant_sigma_16000"), (32000, "constant_sigma"))):
        runs = batch(system, n, seeds, 1, 1e-3, seed=2)
        rows = [score(wsindy.identify(d, "qanr_1d", test_functions="qanr_1d"), true_constant) for d in runs]
        good = sum(r["tpr"] == 1.0 and r["error_K"] < tolerance_c and r["error_sigma"] < tolerance_c for r in rows)
        baseline_good = sum(r["tpr"] == 1.0 and r["error_K"] < tolerance_c and r["error_sigma"] < tolerance_c
                            for r in baseline_rows(rows))
        coefficient = [r["selected"].get("D:x^0", 0.0) / (sigma_value ** 2 / 2) - 1 for r in rows if r["tpr"] == 1.0]
        metrics[key] = dict(summarize(rows, ["error_K", "error_sigma"]), good=good, N=n, M=1,
                            error_D_mean=float(np.mean(coefficient)) if coefficient else None,
                            error_D_sd=float(np.std(coefficient)) if coefficient else None, baseline_good=baseline_good)
        print(f"QANR constant sigma N={n}: TPR=1 and errors < {tolerance_c}: {good}/{seeds}", flush=True)
    n = metrics["constant_sigma"]["N"]
    good = metrics["constant_sigma"]["good"]
    baseline_good = metrics["constant_sigma"]["baseline_good"]
    report.check(f"QANR sigma=sqrt(2)0.1, NM={n} (M=1): TPR=1 and errors of K and sigma <{tolerance_c:.0%}",
                 f"{good}/{seeds}", f">= {need}/{seeds} seeds", good >= need,
                 baseline=(BASELINE, f"{baseline_good}/{seeds}", baseline_good >= need))

    # 5.2 (c): variable diffusivity sqrt(2) 0.1 |x - 2| (metrics only; the paper reports TPR >= 0.95)
    true_variable = wsindy.TrueModel({"K:|x|^1": -1.0, "K:|x|^2": 0.5, "D:x^0": 0.04, "D:x^1": -0.04, "D:x^2": 0.01},
                                     grad_K=lambda x: x - torch.sign(x), sigma=lambda x: sigma_value * (x - 2).abs())
    variable_seeds = max(2, seeds // 2)
    system = systems.get("qanr_1d", diffusion="variable")
    runs = batch(system, n // 2, variable_seeds, 2, 1e-3, seed=3)
    rows = [score(wsindy.identify(d, "qanr_1d", test_functions="qanr_1d"), true_variable) for d in runs]
    metrics["variable_sigma"] = dict(summarize(rows, ["error_K", "error_sigma"]), N=n // 2, M=2)

    # convergence in N (constant diffusivity, M = 1): median error of the correctly identified models
    # (TPR = 1; at small N few are, and those that survive the thresholding are a biased sample),
    # fitted over the sizes where at least half the seeds are correct
    sizes = [8000, 16000, 32000] if quick else [4000, 8000, 16000, 32000, 64000, 128000]
    conv_seeds = seeds  # --seeds applies here too (defaults: 20 full, 3 quick)
    system = systems.get("qanr_1d", diffusion="constant")
    curve = {"N": sizes, "error_K": [], "error_sigma": [], "error_K_all": [], "error_sigma_all": [], "tpr": [],
             "tpr_one": [], "baseline_tpr_one": [], "baseline_error_K_median_all_seeds": [],
             "baseline_error_sigma_median_all_seeds": []}
    for i, size in enumerate(sizes):
        runs = batch(system, size, conv_seeds, 1, 1e-3, seed=10 + i)
        rows = [score(wsindy.identify(d, "qanr_1d", test_functions="qanr_1d"), true_constant) for d in runs]
        ok = [r for r in rows if r["tpr"] == 1.0]
        curve["error_K_all"].append([r["error_K"] for r in ok])
        curve["error_sigma_all"].append([r["error_sigma"] for r in ok])
        curve["error_K"].append(float(np.median([r["error_K"] for r in ok])) if ok else float("nan"))
        curve["error_sigma"].append(float(np.median([r["error_sigma"] for r in ok])) if ok else float("nan"))
        curve["tpr"].append(float(np.mean([r["tpr"] for r in rows])))
        curve["tpr_one"].append(len(ok))
        plain = baseline_rows(rows)
        curve["baseline_tpr_one"].append(sum(r["tpr"] == 1.0 for r in plain))
        for key in ("K", "sigma"):
            curve[f"baseline_error_{key}_median_all_seeds"].append(float(np.median([r[f"error_{key}"] for r in plain])))
        print(f"QANR convergence N={size}: TPR=1 in {len(ok)}/{conv_seeds}, median err_K={curve['error_K'][-1]:.4g} "
              f"err_sigma={curve['error_sigma'][-1]:.4g}", flush=True)
    fitted = [i for i, count in enumerate(curve["tpr_one"]) if count >= max(2, conv_seeds // 2)]
    fit_sizes = [sizes[i] for i in fitted]
    slope_K = _slope(fit_sizes, [curve["error_K"][i] for i in fitted])
    slope_sigma = _slope(fit_sizes, [curve["error_sigma"][i] for i in fitted])
    curve.update(slope_K=slope_K, slope_sigma=slope_sigma, seeds=conv_seeds, fit_sizes=fit_sizes,
                 statistic="median over seeds with TPR = 1",
                 baseline_slope_K_all_seeds=_slope(sizes, curve["baseline_error_K_median_all_seeds"]),
                 baseline_slope_sigma_all_seeds=_slope(sizes, curve["baseline_error_sigma_median_all_seeds"]))
    metrics["convergence"] = curve
    anchor = next(e for e in curve["error_K"] + [1.0] if np.isfinite(e))
    reference = [anchor * (s / sizes[0]) ** -0.5 for s in sizes]
    line_plot(report.path("wsindy_convergence.png"), sizes,
              {f"grad K (slope {slope_K:.2f})": curve["error_K"], f"sigma (slope {slope_sigma:.2f})": curve["error_sigma"],
               "N^-1/2": reference}, "N (particles, M = 1)", "median relative error (TPR = 1 seeds)",
              "QANR 1-D, sigma = sqrt(2) 0.1: WSINDy error vs N", logx=True, logy=True,
              styles={"N^-1/2": "k--"})
    convergence_checks(report, curve, fitted, conv_seeds, quick)


def convergence_checks(report, curve, fitted, seeds, quick):
    """Slope and level of the error curve, for grad K and sigma.

    Least squares on the full library is consistent too: its median error over all seeds decays like
    N^-1/2 as well (20 seeds, full: slope -0.50 for grad K), so a slope alone could not fail it. The
    check also bounds the level: the median error at the largest fitted size below the tolerance of
    the paper's constant-sigma line (1%; quick 2% at its smaller sizes). The baseline never has
    TPR = 1, so it is judged on the median over all its seeds."""
    sizes = curve["N"]
    slope_tolerance, level_tolerance = (0.25, 0.02) if quick else (0.15, 0.01)
    largest = sizes[fitted[-1]] if fitted else sizes[-1]

    def passes(value):
        return abs(value["slope"] + 0.5) <= slope_tolerance and value["error_at_largest_N"] < level_tolerance

    for key, label in (("K", "grad K"), ("sigma", "sigma")):
        value = {"slope": round(curve[f"slope_{key}"], 3),
                 "error_at_largest_N": curve[f"error_{key}"][fitted[-1]] if fitted else float("nan")}
        plain = curve[f"baseline_error_{key}_median_all_seeds"]
        baseline_value = {"slope": round(_slope(sizes, plain), 3), "error_at_largest_N": plain[sizes.index(largest)]}
        span = f"{sizes[fitted[0]]}..{largest}" if fitted else "- (no size with enough TPR = 1 seeds)"
        target = f"slope -0.5 +- {slope_tolerance} and error < {level_tolerance:.0%}"
        report.check(f"median error ({label}) vs N over N = {span} ({seeds} seeds per N): fitted slope, and the "
                     f"error at N = {largest}", value, target, passes,
                     baseline=(BASELINE + ", median over all seeds (no seed has TPR = 1)", baseline_value))


def qanr_centered(report, quick, seeds, progress):
    """Metrics only: sigma = 0, eps = 0.1 on a mixture centred at 0 with overall standard deviation
    about 1 (centres -1.5, 0, 1.5; spread 0.005 as in the paper's text). The paper's numbers imply
    such a scale (h = 0.0234 for 256 bins over mean +- 3 s gives s = 1.0; the diffusion nu ~ eps^2 / 2
    it reports at eps = 0.316 gives ||X||_RMS ~ 1); the noise then has half the standard deviation
    it has on the default mixture (RMS 2.2)."""
    metrics = report.metrics.setdefault("qanr_1d", {})
    true_noiseless = wsindy.TrueModel({"K:|x|^1": -1.0, "K:|x|^2": 0.5}, grad_K=lambda x: x - torch.sign(x))
    n = 4000 if quick else 8000
    system = systems.get("qanr_1d", diffusion="none", centers=(-1.5, 0.0, 1.5), initial_std=0.005)
    runs = batch(system, n, seeds, 1, 1e-3, seed=5)
    for eps in (0.0316, 0.1):
        rows = [score(wsindy.identify(wsindy.add_measurement_noise(d, eps, seed=3000 + s), "qanr_1d",
                                      test_functions="qanr_1d"), true_noiseless, DRIFT) for s, d in enumerate(runs)]
        good = sum(r["tpr"] == 1.0 and r["error_K"] < 0.01 for r in rows)
        metrics[f"centered_mixture_sigma0_eps{eps}"] = dict(summarize(rows, ["error_K"]), good=good, N=n, M=1,
                                                           rms=float(runs[0].positions.pow(2).mean().sqrt()))
        print(f"QANR centred mixture sigma=0 eps={eps}: TPR=1 and err_K<0.01: {good}/{seeds}", flush=True)


def _slope(sizes, errors) -> float:
    """Least-squares slope of log(error) vs log(N) over the sizes with correctly identified models."""
    pairs = [(n, e) for n, e in zip(sizes, errors) if np.isfinite(e)]
    if len(pairs) < 2:
        return float("nan")
    return float(np.polyfit(np.log([n for n, _ in pairs]), np.log([e for _, e in pairs]), 1)[0])


def table5_library() -> dict:
    """Table 2's local 2-D library restricted to cos(m x1) cos(n x2) with m + n <= 6: 7 + 2 x 26 + 26 = 85 columns."""
    pairs = [[m, n] for m in range(6) for n in range(6) if m + n <= 6]
    return {"interaction": [{"type": "power", "exponent": m} for m in range(1, 8)],
            "local": [{"type": "cosine", "frequencies": p, "axis": i} for p in pairs for i in range(2)],
            "diffusion": [{"type": "cosine", "frequencies": p} for p in pairs]}


def local(report, quick, seeds, progress):
    metrics = report.metrics.setdefault("local_2d", {})
    truth = wsindy.TrueModel(
        {"dV/dx1:cos(0x1)*cos(0x2)": -1.0, "dV/dx2:cos(0x1)*cos(0x2)": -1.0, "D:cos(0x1)*cos(0x2)": 1.0,
         "D:cos(1x1)*cos(1x2)": 0.95},
        grad_V=lambda x: -torch.ones_like(x),
        sigma=lambda x: torch.sqrt(2 * (1 + 0.95 * torch.cos(x[..., :1]) * torch.cos(x[..., 1:]))).expand_as(x))
    n = 4096 if quick else 16384
    system = systems.get("local_2d", omega=1.0)
    started = time.perf_counter()
    runs = batch(system, n, seeds, 1, 4e-3 if quick else 2e-3, seed=20)  # omega = 1: D varies on a scale of 1
    metrics["simulate_seconds_omega1"] = time.perf_counter() - started
    rows = [score(wsindy.identify(d, "local_2d", test_functions="local_2d"), truth) for d in runs]
    metrics["omega1"] = dict(summarize(rows, ["error_V", "error_sigma"]), N=n, M=1)
    tpr_one = metrics["omega1"]["tpr_one"]
    need = seeds - max(1, seeds // 20)
    baseline_one = sum(r["tpr"] == 1.0 for r in baseline_rows(rows))
    # Table 2 as printed: 7 + 2 x 36 + 36 = 115 columns; Table 5 lists G as 686 x 85. 85 = 7 + 3 x 26 and 26 is
    # the number of (m, n) in {0..5}^2 with m + n <= 6: that reading (an inference) is scored as a metric
    restricted = table5_library()
    metrics["library_columns"] = {"local_2d (Table 2 as printed)": len(load_library("local_2d", 2)),
                                  "m + n <= 6": len(load_library(restricted, 2)), "paper Table 5": 85}
    rows85 = [score(wsindy.identify(d, restricted, test_functions="local_2d"), truth) for d in runs]
    metrics["omega1_library_m_plus_n_le_6"] = dict(summarize(rows85, ["error_V", "error_sigma"]), N=n, M=1,
                                                  baseline_tpr_one=sum(r["tpr"] == 1.0 for r in baseline_rows(rows85)))
    report.check(f"local 2-D omega=1, N={n}: TPR=1", f"{tpr_one}/{seeds}", f">= {need}/{seeds} seeds", tpr_one >= need,
                 baseline=(BASELINE, f"{baseline_one}/{seeds}", baseline_one >= need))

    system = systems.get("local_2d", omega=20.0)
    homogenized = system.homogenized_diffusivity()
    sigma_h = math.sqrt(2 * homogenized)
    truth_h = wsindy.TrueModel({"dV/dx1:cos(0x1)*cos(0x2)": -1.0, "dV/dx2:cos(0x1)*cos(0x2)": -1.0,
                                "D:cos(0x1)*cos(0x2)": homogenized},
                               grad_V=lambda x: -torch.ones_like(x), sigma=lambda x: torch.full_like(x, sigma_h))
    n20 = 4096 if quick else 16384  # quick: at N = 1024 the right terms were selected in 1 seed of 3
    # the Euler step must resolve the period 2 pi / 20 of D, or the walk sees an arithmetic mean of D
    runs = batch(system, n20, seeds, 1, 1e-3 if quick else 1e-4, seed=21)
    rows = [score(wsindy.identify(d, "local_2d", test_functions="local_2d"), truth_h) for d in runs]
    sigma_errors = [r.get("error_sigma", float("inf")) for r in rows]
    tolerance = 0.15 if quick else 0.02  # quick: Euler step 1e-3 resolves cos(20 x) poorly (bias upwards)
    # sigma counts only where the right terms were selected (TPR = 1): a sigma from a wrong model is no identification

    def identified(scored):
        return sum(r["tpr"] == 1.0 and r.get("error_sigma", float("inf")) <= tolerance for r in scored)

    within, baseline_within = identified(rows), identified(baseline_rows(rows))
    metrics["omega20"] = dict(summarize(rows, ["error_V", "error_sigma"]), N=n20, M=1, homogenized_D=homogenized,
                              homogenized_sigma=sigma_h, error_sigma_all=sigma_errors)
    report.check(f"local 2-D omega=20: TPR=1 and sigma within {tolerance:.0%} of sqrt(2 * {homogenized:.4f}) "
                 f"(rel. L2 over C)", f"{within}/{seeds} (TPR=1 in {metrics['omega20']['tpr_one']}/{seeds}; "
                 f"median sigma error {float(np.median(sigma_errors)):.4f})", f">= {need}/{seeds} seeds",
                 within >= need, baseline=(BASELINE, f"{baseline_within}/{seeds}", baseline_within >= need))


def keller_segel(report, quick, seeds, progress):
    metrics = report.metrics.setdefault("keller_segel_2d", {})
    system = systems.get("keller_segel_2d", sigma=0.0, backend="dense")
    truth = wsindy.TrueModel({"K:[log|x|]_0.01": 1 / (2 * math.pi)}, grad_K=system.grad_K)
    n, experiments = (500, 2) if quick else (800, 2)
    started = time.perf_counter()
    runs = batch(system, n, seeds, experiments, 0.1, seed=30)
    metrics["simulate_seconds_sigma0"] = time.perf_counter() - started
    good, baseline_good = {}, {}
    for eps in ((0.01, 0.1) if quick else (0.01, 0.0316, 0.1)):
        rows = []
        for s, data in enumerate(runs):
            noisy = wsindy.add_measurement_noise(data, eps, seed=2000 + s)
            rows.append(score(wsindy.identify(noisy, "keller_segel_2d", test_functions="keller_segel_2d"), truth, DRIFT))
        metrics[f"sigma0_eps{eps}"] = dict(summarize(rows, ["error_K"]), N=n, M=experiments)
        good[eps] = metrics[f"sigma0_eps{eps}"]["tpr_one"]
        baseline_good[eps] = sum(r["tpr"] == 1.0 for r in baseline_rows(rows))
        print(f"Keller-Segel sigma=0 eps={eps}: TPR=1 in {good[eps]}/{seeds}", flush=True)
    need = seeds - max(1, seeds // 20)
    small = [e for e in good if e <= 0.1]
    report.check(f"Keller-Segel sigma=0, eps<=0.1 (N={n}, M={experiments}): TPR=1 (drift terms)",
                 {str(e): f"{good[e]}/{seeds}" for e in small}, f">= {need}/{seeds} seeds for every eps <= 0.1",
                 min(good[e] for e in small) >= need,
                 baseline=(BASELINE, {str(e): f"{baseline_good[e]}/{seeds}" for e in small},
                           min(baseline_good[e] for e in small) >= need))

    critical = systems.get("keller_segel_2d", sigma=1 / math.sqrt(4 * math.pi), backend="dense")
    d_true = 1 / (8 * math.pi)
    truth_c = wsindy.TrueModel({"K:[log|x|]_0.01": 1 / (2 * math.pi), "D11:cos(0x1)*cos(0x2)": d_true,
                                "D22:cos(0x1)*cos(0x2)": d_true}, grad_K=critical.grad_K,
                               sigma=lambda x: torch.full_like(x, 1 / math.sqrt(4 * math.pi)))
    critical_seeds = 2 if quick else 4
    n_c, m_c = (500, 4) if quick else (1000, 4)
    runs = batch(critical, n_c, critical_seeds, m_c, 0.05, seed=31)
    rows = [score(wsindy.identify(d, "keller_segel_2d", test_functions="keller_segel_2d"), truth_c) for d in runs]
    metrics["critical_sigma"] = dict(summarize(rows, ["error_K", "error_sigma"]), N=n_c, M=m_c,
                                     selected=[r["selected"] for r in rows])


# -- conformance with the authors' code (issue 16) ---------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
AUTHORS_TOOLS = ROOT.parent / "shared" / "tools" / "wsindy-authors"
AUTHORS_FILE = ROOT.parent / "shared" / "data" / "wsindy-ips" / "qanr1D_N2000_nu0.mat"
LIVESCRIPT_NOISE = 10 ** -1.5
AUTHORS_DIFFUSION = "([x.^0.*t.^0]u^1)_{xx}"
PAPER_OPTIONS = {"grid_rule": "union", "trim": None, "selection": "mstls", "regression": "mstls", "ridge": 0.0}  # the paper


def grad_k_error(w_sign: float, w_linear: float) -> float:
    """Relative l2 error of grad K = w_sign sign(x) + w_linear x against x - sign(x) on [-2, 2] (801 points)."""
    x = torch.linspace(-2, 2, 801, dtype=torch.float64)
    truth = x - torch.sign(x)
    return float((w_sign * torch.sign(x) + w_linear * x - truth).norm() / truth.norm())


def torchmf_row(model, sigma_true=None) -> dict:
    """Scores of a model of QANR: grad K error, drift TPR (and full TPR when sigma_true), D, threshold."""
    selected = model.selected
    true_terms = {"K:|x|^1": -1.0, "K:|x|^2": 0.5}
    row = {"error_K": grad_k_error(selected.get("K:|x|^1", 0.0), 2 * selected.get("K:|x|^2", 0.0)),
           "tpr_drift": wsindy.tpr(model, true_terms, DRIFT), "D": selected.get("D:x^0", 0.0),
           "threshold": model.info["threshold"], "seconds": model.info["seconds"]["total"]}
    if sigma_true is not None:
        row["tpr"] = wsindy.tpr(model, dict(true_terms, **{"D:x^0": sigma_true ** 2 / 2}))
        row["error_sigma"] = abs(math.sqrt(2 * max(row["D"], 0.0)) / sigma_true - 1)
    return row


def authors_rows(result_file: Path, sigma_true=None) -> list:
    """The authors' weights from run_authors.m's OUT.mat, scored like ``torchmf_row``."""
    from scipy.io import loadmat

    rows = []
    results = loadmat(str(result_file), squeeze_me=True)["results"]
    for entry in ([results] if results.dtype.names else np.atleast_1d(results)):  # one repetition: a bare struct
        def field(name):
            value = entry[name]
            return value.item() if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1 else value

        weights, tags = np.asarray(field("W"), dtype=np.float64).ravel(), [str(t) for t in field("tags")]
        nonzero = {tags[i] for i in np.nonzero(weights)[0]}
        drift_found = {t for t in nonzero if t.startswith("conv") or t.endswith("_{x}")}
        truth = {"convmonx0", "convmonx1"}
        row = {"error_K": grad_k_error(weights[tags.index("convmonx0")], weights[tags.index("convmonx1")]),
               "tpr_drift": len(truth & drift_found) / len(truth | drift_found),
               "D": float(weights[tags.index(AUTHORS_DIFFUSION)]), "seconds": float(np.sum(field("ET")))}
        if sigma_true is not None:
            full = truth | {AUTHORS_DIFFUSION}
            row["tpr"] = len(full & nonzero) / len(full | nonzero)
            row["error_sigma"] = abs(math.sqrt(2 * max(row["D"], 0.0)) / sigma_true - 1)
        rows.append(row)
    return rows


def run_authors(code: Path, data_file: Path, noise: float, reps: int, work: Path):
    """The authors' pipeline in Octave (leanest variant, one thread); None when it fails."""
    out = work / f"authors_{data_file.stem}_{noise:g}_{reps}.mat"
    environment = dict(os.environ, NUMPHI="1", QP_FASTPATH="1", OMP_NUM_THREADS="1")
    command = [str(AUTHORS_TOOLS / "run.sh"), str(code), str(data_file), repr(float(noise)), str(reps), str(out)]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    if completed.returncode != 0 or not out.is_file():
        print(f"authors' pipeline failed on {data_file.name}: {completed.stdout[-400:]} {completed.stderr[-400:]}",
              flush=True)
        return None
    return out


def load_authors_file():
    from scipy.io import loadmat

    content = loadmat(str(AUTHORS_FILE))
    positions = torch.from_numpy(np.ascontiguousarray(content["Xscell"][0, 0].transpose(2, 0, 1))).unsqueeze(0)
    return positions, torch.from_numpy(content["t"].reshape(-1).astype(np.float64))


def save_authors_layout(path: Path, positions: torch.Tensor, times: torch.Tensor) -> Path:
    """Write ``positions (1, L, N, 1)`` in the authors' layout (``Xscell{1}`` = N x d x L, ``t`` = 1 x L)."""
    from scipy.io import savemat

    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = positions[0].permute(1, 2, 0).numpy()
    savemat(str(path), {"Xscell": cell, "t": times.numpy().reshape(1, -1)})
    return path


def medians(rows, keys=("error_K", "D", "seconds")) -> dict:
    return {f"{k}_median": float(np.median([r[k] for r in rows])) for k in keys if rows and k in rows[0]}


def conformance(report, quick, seeds, progress, authors_code=None):
    metrics = report.metrics.setdefault("conformance", {})
    if not AUTHORS_FILE.is_file():
        report.check("conformance with the authors' file", None, "measured", None,
                     skipped=f"the authors' file is absent ({AUTHORS_FILE})", baseline=("not measured", None))
        return
    code = Path(authors_code) if authors_code else None
    octave = shutil.which("octave-cli") is not None and code is not None and (code / "utils").is_dir()
    metrics["authors_pipeline"] = {"ran": octave, "code": str(code) if code else None,
                                   "variant": "NUMPHI=1 QP_FASTPATH=1, one thread (leanest)"}
    positions, times = load_authors_file()
    work = Path(tempfile.mkdtemp(prefix="wsindy_conformance_"))
    draws = seeds

    # noiseless file: accuracy, D, and identify's time (best of 5 after a warm-up) against the authors' leanest
    wsindy.identify(positions, "default", times=times)
    runs = [wsindy.identify(positions, "default", times=times) for _ in range(5)]
    clean = torchmf_row(runs[0])
    identical = all(torch.equal(m.coefficients, runs[0].coefficients) and m.info["threshold"] == runs[0].info["threshold"]
                    for m in runs)
    best = min(m.info["seconds"]["total"] for m in runs)
    paper_clean = torchmf_row(wsindy.identify(positions, "default", times=times, **PAPER_OPTIONS))
    metrics["noiseless"] = {"torchmf": clean, "torchmf_paper_mstls": paper_clean, "identify_best_seconds": best}
    authors_clean = None
    if octave:
        out = run_authors(code, AUTHORS_FILE, 0.0, 3, work)
        authors_clean = authors_rows(out) if out else None
        metrics["noiseless"]["authors"] = authors_clean
    report.check("authors' file, no noise: grad K error (on [-2, 2]) and D:x^0 (constrained, >= 0)",
                 {"error_K": clean["error_K"], "D": clean["D"]}, "error_K <= 3.1e-4 and D <= 3.1e-5",
                 lambda v: v["error_K"] <= 3.1e-4 and v["D"] <= 3.1e-5,
                 baseline=("the paper's MSTLS on the session-2 grid", {"error_K": paper_clean["error_K"],
                                                                       "D": paper_clean["D"]}))
    limit = (min(r["seconds"] for r in authors_clean) / 3) if authors_clean else 0.16
    report.check("identify on the authors' file (histogram included, best of 5, this process's threads)",
                 round(best, 4), f"<= {limit:.3f} s (" + ("1/3 of the authors' leanest Octave time, same run)"
                                                         if authors_clean else "Octave absent: 0.16 s)"),
                 lambda v: v <= limit,
                 baseline=("the authors' leanest Octave time" if authors_clean else "the authors' leanest Octave "
                           "time measured for issue 16 (Octave absent now)",
                           round(min(r["seconds"] for r in authors_clean), 4) if authors_clean else 0.47))

    # noise 10^-1.5, `draws` draws each
    noisy = [wsindy.add_measurement_noise(positions, LIVESCRIPT_NOISE, seed=4000 + s) for s in range(draws)]
    ours = [torchmf_row(wsindy.identify(x, "default", times=times)) for x in noisy]
    preset = [torchmf_row(wsindy.identify(x, "qanr_1d", times=times, test_functions="qanr_1d")) for x in noisy]
    paper = [torchmf_row(wsindy.identify(x, "default", times=times, **PAPER_OPTIONS)) for x in noisy]
    repeated = [wsindy.identify(noisy[0], "default", times=times) for _ in range(5)]
    identical_noisy = all(torch.equal(m.coefficients, repeated[0].coefficients)
                          and m.info["threshold"] == repeated[0].info["threshold"] for m in repeated)
    metrics["noise_10^-1.5"] = {"draws": draws, "torchmf": medians(ours), "torchmf_qanr_1d_preset": medians(preset),
                                "torchmf_paper_mstls": medians(paper),
                                "torchmf_errors": [r["error_K"] for r in ours],
                                "torchmf_tpr_drift_one": sum(r["tpr_drift"] == 1 for r in ours),
                                "thresholds_5_runs": [m.info["threshold"] for m in repeated]}
    authors_noisy = None
    if octave:
        out = run_authors(code, AUTHORS_FILE, LIVESCRIPT_NOISE, draws, work)
        authors_noisy = authors_rows(out) if out else None
        if authors_noisy:
            metrics["noise_10^-1.5"]["authors"] = dict(medians(authors_noisy),
                                                       errors=[r["error_K"] for r in authors_noisy],
                                                       tpr_drift_one=sum(r["tpr_drift"] == 1 for r in authors_noisy))
    ours_median = float(np.median([r["error_K"] for r in ours]))
    reference = float(np.median([r["error_K"] for r in authors_noisy])) if authors_noisy else 0.0044
    report.check(f"authors' file, noise 10^-1.5, {draws} draws: median grad K error",
                 round(ours_median, 5), f"<= the authors' median {reference:.4f} "
                 + ("(measured in this run)" if authors_noisy else "(measured in Octave, issue 16: Octave absent now)"),
                 lambda v: v <= reference,
                 baseline=("the paper's MSTLS on the session-2 grid", round(float(np.median([r["error_K"] for r in paper])), 5)))
    need = draws - max(1, draws // 20)
    tpr_one = sum(r["tpr_drift"] == 1 for r in ours)
    report.check(f"authors' file, noise 10^-1.5: TPR = 1 (drift terms; D:x^0 kept >= 0 as by the authors)",
                 f"{tpr_one}/{draws}", f">= {need}/{draws}", tpr_one >= need,
                 baseline=(BASELINE, f"{sum(wsindy_tpr_of_least_squares(x, times) == 1 for x in noisy[:3])}/3 (3 draws)",
                           False))
    different = [wsindy.identify(x, "default", times=times) for x in noisy[:2]]
    report.check("same data, same call, 5 runs: identical threshold and coefficients (noiseless and one noisy draw)",
                 {"noiseless": identical, "noisy": identical_noisy}, "identical",
                 lambda v: v["noiseless"] and v["noisy"],
                 baseline=("two different noise draws (must differ)",
                           {"noiseless": torch.equal(different[0].coefficients, different[1].coefficients),
                            "noisy": different[0].info["threshold"] == different[1].info["threshold"]}))

    # simulated QANR with constant sigma, N = 16,000 (quick: 4,000), both pipelines on the same files
    n = 4000 if quick else 16000
    sigma_true = SQRT2 * 0.1
    sim_seeds = 1 if quick else 3
    runs = batch(systems.get("qanr_1d", diffusion="constant"), n, sim_seeds, 1, 1e-3, seed=40)
    ours, theirs = [], []
    for s, data in enumerate(runs):
        ours.append(torchmf_row(wsindy.identify(data, "default"), sigma_true))
        if octave:
            file = save_authors_layout(work / f"qanr_sigma_{n}_{s}.mat", data.positions, data.times)
            out = run_authors(code, file, 0.0, 1, work)
            if out:
                theirs.extend(authors_rows(out, sigma_true))
    metrics[f"simulated_constant_sigma_N{n}"] = {"seeds": sim_seeds, "torchmf": ours, "authors": theirs,
                                                 "torchmf_median": medians(ours, ("error_K", "error_sigma")),
                                                 "authors_median": medians(theirs, ("error_K", "error_sigma"))}
    print(f"conformance: simulated N={n}: torchmf {medians(ours, ('error_K', 'error_sigma'))}, "
          f"authors {medians(theirs, ('error_K', 'error_sigma'))}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def wsindy_tpr_of_least_squares(positions, times) -> float:
    """Drift TPR of the unthresholded least-squares fit of the default call (the trivial baseline)."""
    model = least_squares_model(wsindy.identify(positions, "default", times=times))
    return wsindy.tpr(model, {"K:|x|^1": -1.0, "K:|x|^2": 0.5}, DRIFT)


def heldout(report, quick, seeds, progress):
    """Systems outside the paper (torchmf.wsindy.heldout) at N x M = 64,000 with the default library."""
    from torchmf.wsindy.heldout import HELD_OUT, get_held_out

    metrics = report.metrics.setdefault("heldout", {})
    n, m = (4000, 4) if quick else (16000, 4)
    for name in HELD_OUT:
        system = get_held_out(name)
        started = time.perf_counter()
        data = system.simulate(n, m, seed=50)
        truth = system.true_model()
        model = wsindy.identify(data, "default", ensemble=20, ensemble_seed=0)
        paper = wsindy.identify(data, "default", ensemble=20, ensemble_seed=0, **PAPER_OPTIONS)
        probabilities = model.info["inclusion_probabilities"]
        row = {"tpr": wsindy.tpr(model, truth.terms), "errors": wsindy.relative_errors(model, truth),
               "selected": model.selected, "inclusion_true_terms": {t: probabilities[t] for t in truth.terms},
               "inclusion_other_terms_above_0.1": {t: p for t, p in probabilities.items()
                                                   if p > 0.1 and t not in truth.terms},
               "paper_mstls": {"tpr": wsindy.tpr(paper, truth.terms), "selected": paper.selected,
                               "inclusion_true_terms": {t: paper.info["inclusion_probabilities"][t]
                                                        for t in truth.terms}},
               "N": n, "M": m, "seconds": time.perf_counter() - started}
        metrics[name] = row
        lowest = min(row["inclusion_true_terms"].values())
        report.check(f"held-out {name}, N x M = {n * m}, default library: TPR and smallest inclusion probability "
                     f"of a true term (20 row resamples)", {"tpr": row["tpr"], "lowest_inclusion": lowest},
                     "TPR = 1 and >= 0.9", lambda v: v["tpr"] == 1.0 and v["lowest_inclusion"] >= 0.9,
                     baseline=(BASELINE + " (it keeps every term)",
                               {"tpr": wsindy.tpr(least_squares_model(model), truth.terms), "lowest_inclusion": 1.0}))


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, help="seeds per setting (default 20; 3 with --quick)")
    parser.add_argument("--only", action="append", default=[],
                        choices=["qanr", "qanr_centered", "local", "keller_segel", "heldout", "conformance"],
                        help="run only these sections")
    parser.add_argument("--conformance", action="store_true",
                        help="only the conformance runs against the authors' pipeline (same as --only conformance)")
    parser.add_argument("--authors-code", default=os.environ.get("WSINDY_AUTHORS_CODE"),
                        help="a copy of MathBioCU/WSINDy_IPS (files; ../shared/tools/wsindy-authors/extract.sh)")
    parser.add_argument("--progress", action="store_true", help="show simulation progress bars")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine OpenMP spinning of a "
                             "second thread made small linear algebra many times slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = args.seeds or (3 if args.quick else 20)
    report = Report("reproduce_wsindy", args)
    report.settings.update(seeds=seeds, threads=torch.get_num_threads())
    if args.conformance:
        args.only = list(args.only) + ["conformance"]
    sections = {"qanr": qanr, "qanr_centered": qanr_centered, "local": local, "keller_segel": keller_segel,
                "heldout": heldout, "conformance": conformance}
    for name, section in sections.items():
        if args.only and name not in args.only or (name == "conformance" and not args.only):
            continue  # the conformance runs only on request (Octave, the authors' code)
        started = time.perf_counter()
        if name == "conformance":
            conformance(report, args.quick, seeds, args.progress, args.authors_code)
        else:
            section(report, args.quick, seeds, args.progress)
        report.metrics.setdefault("seconds", {})[name] = time.perf_counter() - started
        print(f"[{name}] {report.metrics['seconds'][name]:.1f} s", flush=True)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
