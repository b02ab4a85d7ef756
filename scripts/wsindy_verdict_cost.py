"""The cost of identify's verdict, before and after issue 23's second session, in one process (JSON out).

Examples:
    python scripts/wsindy_verdict_cost.py --out runs/bench_wsindy_verdict            # bench_wsindy --quick data
    python scripts/wsindy_verdict_cost.py --particles 64000 --repeats 5 --out runs/bench_wsindy_verdict

On the data of ``scripts/bench_wsindy.py`` (same simulations, same call: the paper's library and Table 5
test functions), the best of ``--repeats`` timings (after one warm-up; the variants alternate) of

- ``session1``: the verdict of the first session -- both halves of the particles assembled in full, no
  missing-term, kernel or affine checks (reproduced by calling the halves without the full system and
  the support, and with the three checks stubbed out);
- ``default``: this session's verdict -- the second half only when the first misses the support, its
  linear entries from the full system; the missing-term test; the affine-identifiability and (1-D)
  nonparametric-kernel checks;
- ``no_halves``: ``halves=False`` (the lower bound with the resamples kept).

Targets of ``bench_wsindy.py`` (the whole identify call): local 2-D 3.2 s, QANR 0.9 s, Keller-Segel 2.8 s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_wsindy  # noqa: E402

import torchmf.wsindy as wsindy_package  # noqa: E402
from torchmf.data.files import write_json  # noqa: E402

CURRENT = {name: getattr(wsindy_package, name) for name in
           ("half_supports", "missing_terms", "affine_residual", "nonparametric_gain", "pair_distance_quantile")}


def session_one(*args, full=None, reference=None, **options):
    """The first session's halves: both assembled from their own histograms, whatever the first finds."""
    return CURRENT["half_supports"](*args, **options)


SESSION_ONE = {"half_supports": session_one, "missing_terms": lambda *a, **k: None,
               "affine_residual": lambda *a, **k: 1.0, "nonparametric_gain": lambda *a, **k: None,
               "pair_distance_quantile": lambda *a, **k: 0.0}


def timed(data, name: str, patch: dict, halves: bool) -> tuple:
    for key, value in patch.items():
        setattr(wsindy_package, key, value)
    try:
        started = time.perf_counter()
        model = wsindy_package.identify(data, name, test_functions=name, halves=halves)
        return time.perf_counter() - started, model
    finally:
        for key, value in CURRENT.items():
            setattr(wsindy_package, key, value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--particles", type=int, default=16000, help="total particles (bench_wsindy --quick: 16,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = bench_wsindy.datasets(args.particles, args.particles < 64000, torch.device("cpu"), torch.float32)
    variants = {"session1": (SESSION_ONE, True), "default": ({}, True), "no_halves": ({}, False)}
    results = {}
    for name, trajectories in data.items():
        timed(trajectories, name, {}, True)  # warm-up
        rows = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant, (patch, halves) in variants.items():
                seconds, model = timed(trajectories, name, patch, halves)
                rows[variant].append({"seconds": seconds, "verdict_seconds": model.info["seconds"]["verdict"],
                                      "reliable": model.info["reliable"], "halves_examined": len(model.info.get("halves", []))})
        results[name] = {variant: {"best_seconds": min(r["seconds"] for r in runs), "runs": runs}
                         for variant, runs in rows.items()}
        print(f"{name}: " + ", ".join(f"{v} {results[name][v]['best_seconds']:.3f} s" for v in variants)
              + f" (target {bench_wsindy.TARGETS[name]:.1f} s)", flush=True)
    write_json(Path(args.out) / "bench_wsindy_verdict.json",
               {"settings": vars(args), "load_average_at_end": os.getloadavg(), "targets": bench_wsindy.TARGETS,
                "results": results})
    print(f"wrote {Path(args.out) / 'bench_wsindy_verdict.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
