"""Issue 23's held-out suite: every WSINDy selection method on systems nobody tuned for, in one run, JSON out.

Examples:
    nice python scripts/wsindy_suite.py --sizes 8000 --seeds 10 --out runs/wsindy_suite
    python scripts/wsindy_suite.py --quick --out runs/wsindy_suite_quick   # 2 systems, 2 seeds, 8,000

The systems are simulated in plain numpy by ``scripts/wsindy_suite_systems.py`` (no torchmf code;
forces checked against the O(N^2) sum in tests/test_wsindy_suite.py), N x M = 8,000 (M = 8) and
64,000 (M = 8), seeds 0..9; ``--cache DIR`` keeps the simulations between runs. Each dataset is
identified with the default library by

- ``l0`` (the default of ``wsindy.identify``), ``l0_exact`` (``--exact``: every subset, slow),
- ``mstls_paper`` (the paper's MSTLS: ``selection="mstls", regression="mstls", ridge=0``),
- ``mstls_constrained`` (the previous default: constrained MSTLS with the ridge, intersection grid),
- ``stability`` (bagged MSTLS), ``least_squares`` (full library: the trivial baseline),
- ``oracle`` (least squares on the true terms only; polynomial systems) on the default grid and on
  the intersection grid (``oracle_intersection``: the bias of a cropping grid).

Scores per run: exact support (the selected names equal the true ones), TPR, relative l2 errors of
grad K on 4,000 particle offsets of the data, of grad V and sigma on 4,000 particle positions,
the verdict (``reliable``, reasons, inclusion probabilities, held-out residual, condition of the
selected columns, the largest missing-term gain, the nonparametric-kernel gain and the affine residual;
``scripts/wsindy_suite_verdict.py`` summarises them) and seconds. The summary counts, per system, size and method, exact supports,
median grad K errors, and the verdict's flags on wrong and on right supports.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wsindy_suite_systems as suite  # noqa: E402

from torchmf import wsindy  # noqa: E402
from torchmf.data import Trajectories  # noqa: E402
from torchmf.data.files import write_json  # noqa: E402

METHODS = {
    "l0": {},
    "l0_exact": {"selection": "l0_exact"},
    "mstls_paper": {"selection": "mstls", "regression": "mstls", "ridge": 0.0},
    "mstls_constrained": {"selection": "mstls", "grid_rule": "intersection"},
    "stability": {"selection": "stability"},
    "least_squares": {"selection": "least_squares", "ensemble": 0},
}


def dataset(name: str, size: int, seed: int, cache):
    path = None if cache is None else Path(cache) / f"{name}_{size}_{seed}.npz"
    if path is not None and path.is_file():
        stored = np.load(path)
        positions, times = stored["p"], stored["t"]
    else:
        positions, times = suite.simulate(name, size // 8, 8, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(str(path) + ".part.npz", p=positions, t=times)
            os.replace(str(path) + ".part.npz", path)
    return Trajectories(torch.from_numpy(positions), torch.from_numpy(times))


def samples(data: Trajectories, seed: int, count: int = 4000):
    """Particle offsets and positions drawn from the data: ``(count, d)`` each (the data's range)."""
    rng = np.random.default_rng(seed)
    positions = data.positions.numpy()
    m, length, n, _ = positions.shape
    frame = rng.integers(0, length, count), rng.integers(0, m, count)
    first, second = rng.integers(0, n, count), rng.integers(0, n, count)
    points = positions[frame[1], frame[0], first]
    offsets = points - positions[frame[1], frame[0], second]
    return offsets[first != second], points


def scores(model, system, offsets, points) -> dict:
    truth = {k for k, v in system.terms.items() if v}
    selected = set(model.selected)
    found = truth & selected
    out = {"exact": selected == truth, "tpr": len(found) / max(len(truth | selected), 1),
           "selected": sorted(selected)}
    as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    if system.grad_k is not None:
        true_k = system.grad_k(offsets if system.dim > 1 else offsets[:, 0])
        true_k = true_k if system.dim > 1 else true_k[:, None]
        out["K"] = float(np.linalg.norm(model.grad_K(as_torch(offsets)).numpy() - true_k) / np.linalg.norm(true_k))
    state = points if system.dim > 1 else points[:, 0]
    true_v = system.drift(state) if system.dim > 1 else system.drift(state)[:, None]
    out["V"] = float(np.linalg.norm(model.grad_V(as_torch(points)).numpy() - true_v) / max(np.linalg.norm(true_v), 1e-300))
    true_sigma = np.sqrt(2 * system.diffusion(state)) if system.dim > 1 else np.sqrt(2 * system.diffusion(state))[:, None]
    out["sigma"] = float(np.linalg.norm(model.sigma(as_torch(points)).numpy() - true_sigma) / np.linalg.norm(true_sigma))
    info = model.info
    for key in ("reliable", "reasons", "held_out_residual", "selected_condition", "halves", "selection"):
        if key in info:
            out[key] = info[key]
    gains = info.get("missing_term_gains") or {}
    if gains:  # the verdict's missing-term test: the left-out term with the largest held-out gain
        name = max(gains, key=gains.get)
        out["missing_term"] = [name, round(gains[name], 4)]
    for key in ("nonparametric_kernel_gain", "affine_residual"):
        if key in info:
            out[key] = round(info[key], 4)
    if "inclusion_probabilities" in info:
        out["probabilities"] = {k: round(v, 3) for k, v in info["inclusion_probabilities"].items() if v > 0}
    if "mass_left_out" in info:
        out["mass_left_out"] = info["mass_left_out"]["max"]
    out["seconds"] = info["seconds"]["total"]
    return out


def oracle(data, system, options) -> object:
    library = wsindy.load_library("default", system.dim)
    terms = [t for t in library.terms if t.name in system.terms]
    restricted = wsindy.Library(terms, system.dim, name="true terms")
    return wsindy.identify(data, restricted, selection="least_squares", ensemble=0, **options)


def run_one(name, size, seed, methods, cache) -> dict:
    system = suite.SYSTEMS[name]
    data = dataset(name, size, seed, cache)
    offsets, points = samples(data, seed + 1000)
    result = {}
    for method in methods:
        options = METHODS[method]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = wsindy.identify(data, "default", **options)
        result[method] = scores(model, system, offsets, points)
        result[method]["warnings"] = [str(w.message)[:120] for w in caught]
    if system.polynomial:
        result["oracle"] = scores(oracle(data, system, {}), system, offsets, points)
        result["oracle_intersection"] = scores(oracle(data, system, {"grid_rule": "intersection"}), system,
                                               offsets, points)
    return result


def summarise(runs: list) -> dict:
    table = {}
    for run in runs:
        for method, score in run["methods"].items():
            key = f"{run['system']}|{run['size']}|{method}"
            row = table.setdefault(key, {"runs": 0, "exact": 0, "K": [], "wrong_flagged": 0, "wrong": 0,
                                         "right_flagged": 0, "seconds": []})
            row["runs"] += 1
            row["exact"] += int(score["exact"])
            if "K" in score:
                row["K"].append(score["K"])
            row["seconds"].append(score["seconds"])
            if "reliable" in score:
                if score["exact"]:
                    row["right_flagged"] += int(not score["reliable"])
                else:
                    row["wrong"] += 1
                    row["wrong_flagged"] += int(not score["reliable"])
    for row in table.values():
        row["median_K"] = statistics.median(row["K"]) if row["K"] else None
        row["max_K"] = max(row["K"]) if row["K"] else None
        row["median_seconds"] = statistics.median(row["seconds"])
        del row["K"], row["seconds"]
    return table


def markdown(runs: list) -> str:
    """The summary as a markdown table (docs/wsindy.md)."""
    lines = ["| system | N x M | method | exact support | median / max grad K error | median V error | "
             "median sigma error | wrong supports flagged | right supports flagged | median s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for run in runs:
        for method, score in run["methods"].items():
            rows.setdefault((run["system"], run["size"], method), []).append(score)
    for (system, size, method), scores in rows.items():
        exact = [s for s in scores if s["exact"]]
        wrong = [s for s in scores if not s["exact"]]
        errors = [s["K"] for s in scores if "K" in s]
        k = f"{statistics.median(errors):.1%} / {max(errors):.1%}" if errors else "-"
        flagged = lambda group: sum(s.get("reliable") is False for s in group)  # noqa: E731
        lines.append(f"| {system} | {size} | {method} | {len(exact)}/{len(scores)} | {k} | "
                     f"{statistics.median(s['V'] for s in scores):.1%} | "
                     f"{statistics.median(s['sigma'] for s in scores):.1%} | {flagged(wrong)}/{len(wrong)} | "
                     f"{flagged(exact)}/{len(exact)} | {statistics.median(s['seconds'] for s in scores):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 64000])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--systems", nargs="+", default=list(suite.SYSTEMS))
    parser.add_argument("--methods", nargs="+", default=["l0", "mstls_paper", "mstls_constrained", "stability",
                                                          "least_squares"])
    parser.add_argument("--exact", action="store_true", help="also run l0_exact (every subset; slow)")
    parser.add_argument("--cache", default=None, help="folder keeping the simulations (npz) between runs")
    parser.add_argument("--quick", action="store_true", help="2 systems, 2 seeds, 8,000 particles")
    parser.add_argument("--only-cached", action="store_true", help="skip the datasets not in --cache (no simulation)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", default=None, help="print the markdown table of an existing wsindy_suite.json and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())["runs"]))
        return 0
    unknown = sorted(set(args.systems) - set(suite.SYSTEMS)) + sorted(set(args.methods) - set(METHODS))
    if unknown:
        print(f"wsindy_suite: unknown systems/methods {unknown}; expected {list(suite.SYSTEMS)} / {list(METHODS)}",
              file=sys.stderr)
        return 2
    if args.quick:
        args.systems, args.seeds, args.sizes = ["cubic_well", "morse_1d"], 2, [8000]
    methods = list(args.methods) + (["l0_exact"] if args.exact else [])
    torch.set_num_threads(1)
    started = time.time()
    runs = []
    out = Path(args.out)
    for size in args.sizes:
        for name in args.systems:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if args.only_cached and not (Path(args.cache or ".") / f"{name}_{size}_{seed}.npz").is_file():
                    continue
                result = run_one(name, size, seed, methods, args.cache)
                runs.append({"system": name, "size": size, "seed": seed, "methods": result})
                line = " ".join(f"{m}:{'OK' if s['exact'] else '--'}{'' if s.get('reliable', True) else '!'}"
                                for m, s in result.items())
                print(f"{name} {size} seed {seed}: {line}", flush=True)
                write_json(out / "wsindy_suite.json", {"runs": runs, "summary": summarise(runs),
                                                       "seconds": time.time() - started,
                                                       "systems": {n: suite.SYSTEMS[n].description
                                                                   for n in args.systems}})
    print(markdown(runs))
    print(f"wrote {out / 'wsindy_suite.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
