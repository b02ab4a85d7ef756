"""Issue 23: the nonparametric K (``piecewise_linear``) on the suite's Morse and Gaussian kernels, JSON out.

Example:
    python scripts/wsindy_suite_nonparametric.py --cache DIR --sizes 8000 64000 --seeds 5 --out runs/wsindy_nonparametric

For each dataset of ``scripts/wsindy_suite.py`` (same cache, same simulations) and each ``--knots``:

- ``default``: ``identify`` with the default library whose powers are replaced by the hats on
  ``[0, R]``, ``R`` the 99% quantile of the pair distances (``kernel_check.pair_distance_quantile``,
  seeded): the selection chooses V and D, the hats are in every support;
- ``oracle_local``: least squares on the hats and the true local and diffusion terms only (the
  selection taken out: what the weak form with hats can do at best);
- ``interpolant``: the hats' interpolant of the true K (no data): the floor set by the basis itself
  (grad K of a piecewise-linear K is piecewise constant);
- ``default_gradient``: as ``default`` with ``piecewise_linear_gradient`` (hats in K'(r): K piecewise
  quadratic, grad K piecewise linear) on the same knots;
- ``gradient_hats``: the same basis with the true local terms, least squares with a first-difference
  penalty on the hat weights whose weight is chosen on 10 held-out time windows (geometric mean of the
  relative residuals; not an identify option): what a smoother basis can do at best.

Scores: relative l2 error of grad K on 4,000 particle offsets of the data (the suite's ``samples``), of V
and sigma; the verdict's ``reliable`` and reasons, and ``affine_residual``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wsindy_suite as suite_runner  # noqa: E402
import wsindy_suite_systems as suite  # noqa: E402

from torchmf import wsindy  # noqa: E402
from torchmf.data.files import write_json  # noqa: E402
from torchmf.wsindy.histogram import default_grid  # noqa: E402
from torchmf.wsindy.kernel_check import pair_distance_quantile  # noqa: E402
from torchmf.wsindy.library import Library, piecewise_linear_gradient_terms  # noqa: E402
from torchmf.wsindy.model import WSINDyModel  # noqa: E402
from torchmf.wsindy.selection import time_blocks  # noqa: E402
from torchmf.wsindy.system import build_system  # noqa: E402

#: the true local and diffusion terms (default-library names) of the two systems
TRUE_LOCAL = {"morse_1d": {"local": [1], "diffusion": [0]}, "gaussian_1d": {"local": [3], "diffusion": [0]}}


def hats_spec(knots: int, reach: float, local=None, kind: str = "piecewise_linear") -> dict:
    spec = wsindy.load_library("default", 1).spec()
    spec["interaction"] = [{"type": kind, "knots": knots, "range": reach}]
    if local is not None:
        spec["local"] = [{"type": "monomial", "powers": [p], "axis": 0} for p in local["local"]]
        spec["diffusion"] = [{"type": "monomial", "powers": [p]} for p in local["diffusion"]]
    return spec


def interpolant_error(system, knots: int, reach: float, offsets: np.ndarray) -> float:
    """grad K error of the piecewise-linear interpolant of the true K on the knots (K from grad K by quadrature)."""
    fine = np.linspace(0, reach, 20001)
    slope = system.grad_k(fine)
    potential = np.concatenate(([0.0], np.cumsum((slope[1:] + slope[:-1]) / 2 * np.diff(fine))))
    step = reach / (knots - 1)
    nodes = np.interp(np.arange(knots) * step, fine, potential)
    r = np.abs(offsets[:, 0])
    cell = np.minimum((r / step).astype(int), knots - 2)
    estimate = np.where(r < reach, (nodes[cell + 1] - nodes[cell]) / step, 0.0) * np.sign(offsets[:, 0])
    truth = system.grad_k(offsets[:, 0])
    return float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth))


def gradient_hats(data, system, knots: int, reach: float, local: dict, offsets, points) -> dict:
    """The ``gradient_hats`` variant (module docstring): scores at the penalty chosen on held-out windows."""
    terms = piecewise_linear_gradient_terms(knots, reach)
    others = wsindy.load_library({"local": [{"type": "monomial", "powers": [p], "axis": 0} for p in local["local"]],
                                  "diffusion": [{"type": "monomial", "powers": [p]} for p in local["diffusion"]]}, 1)
    library = Library(terms + list(others.terms), 1, name="gradient hats")
    positions = data.positions.double()
    grid = default_grid(positions)
    density = wsindy.histogram(positions, grid).double()
    tests = wsindy.make_test_functions(density, grid, float(data.times[1] - data.times[0]))
    matrix, rhs = build_system(density, grid, library, tests)
    mass = tests.integrate(density, 0, [0])
    keep = mass >= 0.01 * mass.max()  # identify's default trim
    matrix, rhs, fold = matrix[keep], rhs[keep], time_blocks(tests.time_index()[keep], 10)
    scale = matrix.norm(dim=0)
    unit = matrix / scale
    count = knots - 1
    difference = torch.zeros(count - 1, unit.shape[1], dtype=torch.float64)
    for i in range(count - 1):  # first differences of the hat weights (a smooth K')
        difference[i, i], difference[i, i + 1] = -1 / scale[i], 1 / scale[i + 1]
    penalty = difference.T @ difference
    best = None
    for weight in [0.0] + [10.0 ** e for e in range(-8, 1)]:
        ridge = weight * float((unit.T @ unit).trace()) / float(penalty.trace()) * penalty
        logs = []
        for f in range(10):
            train, test = fold != f, fold == f
            w = torch.linalg.solve(unit[train].T @ unit[train] + ridge, unit[train].T @ rhs[train])
            logs.append(float(torch.log(((unit[test] @ w - rhs[test]) ** 2).sum() / (rhs[test] ** 2).sum())))
        if best is None or sum(logs) < best[0]:
            best = (sum(logs), weight, torch.linalg.solve(unit.T @ unit + ridge, unit.T @ rhs) / scale)
    model = WSINDyModel(library, best[2], grid, {"seconds": {"total": 0.0}})
    score = suite_runner.scores(model, system, offsets, points)
    return {"K": score["K"], "V": score["V"], "sigma": score["sigma"], "penalty": best[1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 64000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--knots", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs, started = [], time.time()
    for size in args.sizes:
        for name in ("morse_1d", "gaussian_1d"):
            system = suite.SYSTEMS[name]
            for seed in range(args.seeds):
                data = suite_runner.dataset(name, size, seed, args.cache)
                offsets, points = suite_runner.samples(data, seed + 1000)
                reach = pair_distance_quantile(data.positions, seed)
                for knots in args.knots:
                    row = {"system": name, "size": size, "seed": seed, "knots": knots, "reach": reach,
                           "interpolant_K": interpolant_error(system, knots, reach, offsets)}
                    for label, spec, options in (("default", hats_spec(knots, reach), {}),
                                                 ("oracle_local", hats_spec(knots, reach, TRUE_LOCAL[name]),
                                                  {"selection": "least_squares", "ensemble": 0}),
                                                 ("default_gradient", hats_spec(knots, reach, None,
                                                                                "piecewise_linear_gradient"), {})):
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                model = wsindy.identify(data, spec, **options)
                        except ValueError as error:  # rank-deficient G (too many hats for the data)
                            row[label] = {"error": str(error)[:160]}
                            continue
                        score = suite_runner.scores(model, system, offsets, points)
                        row[label] = {key: score[key] for key in ("K", "V", "sigma", "reliable", "reasons", "selected")
                                      if key in score}
                        row[label]["affine_residual"] = model.info.get("affine_residual")
                    row["gradient_hats"] = gradient_hats(data, system, knots, reach, TRUE_LOCAL[name], offsets, points)
                    runs.append(row)
                    print(f"{name} {size} seed {seed} knots {knots}: interpolant {row['interpolant_K']:.3f}, "
                          + ", ".join(f"{label} K {row[label].get('K', float('nan')):.3f}"
                                      for label in ("default", "oracle_local", "default_gradient", "gradient_hats")),
                          flush=True)
                    write_json(Path(args.out) / "wsindy_nonparametric.json",
                               {"runs": runs, "seconds": time.time() - started, "settings": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
