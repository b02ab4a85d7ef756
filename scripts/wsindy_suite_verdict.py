"""Issue 23: how the verdict's checks separate right from wrong supports on the held-out suite (JSON out).

Examples:
    python scripts/wsindy_suite.py --sizes 8000 --methods l0 --cache DIR --out runs/wsindy_suite_verdict
    python scripts/wsindy_suite_verdict.py runs/wsindy_suite_verdict/wsindy_suite.json --out runs/wsindy_suite_verdict

Reads the runs of ``scripts/wsindy_suite.py`` (one or more JSON files) and, per size, for the right
(exact support) and the wrong fits of ``--method`` (default ``l0``):

- the largest held-out gain of a left-out term (``missing_term``; flagged above
  ``torchmf.wsindy.verdict.MISSING_TERM_FACTOR``) and the gain of a nonparametric K
  (``nonparametric_kernel_gain``, 1-D; flagged above ``torchmf.wsindy.kernel_check.FACTOR``): the
  largest value on a right fit and the smallest on a wrong one show the margin of each threshold;
- the data's ``affine_residual`` (``torchmf.wsindy.kernel_check``; a selected ``|x|^2`` is flagged below
  ``AFFINE_RESIDUAL``);
- how many fits each check flags, and how many the verdict flags without the three checks (the
  session-1 verdict), so that the checks' contribution is measured on the same runs.

The thresholds were set on the 8,000-particle runs and confirmed on the 64,000-particle runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from torchmf.data.files import write_json  # noqa: E402
from torchmf.wsindy.kernel_check import AFFINE_RESIDUAL, FACTOR as KERNEL_FACTOR  # noqa: E402
from torchmf.wsindy.verdict import MISSING_TERM_FACTOR  # noqa: E402

#: the reasons added in issue 23's second session (first words of the verdict's reason)
NEW_CHECKS = {"missing terms": "missing_term", "interaction outside the library": "kernel",
              "affine part of grad K": "affine"}


def other_reasons(score: dict) -> list:
    return [r for r in score.get("reasons", []) if not any(r.startswith(prefix) for prefix in NEW_CHECKS)]


def summarise(runs: list, method: str) -> dict:
    table = {}
    for run in runs:
        score = run["methods"].get(method)
        if score is None or "reliable" not in score:
            continue
        group = "right" if score["exact"] else "wrong"
        polynomial = run["system"] not in ("morse_1d", "gaussian_1d")
        row = table.setdefault(str(run["size"]), {}).setdefault(
            f"{group}{'' if polynomial else ' (kernel outside the library)'}",
            {"runs": 0, "flagged": 0, "flagged_without_new_checks": 0, "missing_term_flags": 0, "kernel_flags": 0,
             "affine_flags": 0, "missing_term_gains": [], "kernel_gains": [], "affine_residuals": [], "unflagged": []})
        row["runs"] += 1
        row["flagged"] += int(not score["reliable"])
        row["flagged_without_new_checks"] += int(bool(other_reasons(score)))
        reasons = score.get("reasons", [])
        row["missing_term_flags"] += int(any(r.startswith("missing terms") for r in reasons))
        row["kernel_flags"] += int(any(r.startswith("interaction outside") for r in reasons))
        row["affine_flags"] += int(any(r.startswith("affine part of grad K") for r in reasons))
        if "affine_residual" in score:
            row["affine_residuals"].append(score["affine_residual"])
        if "missing_term" in score:
            row["missing_term_gains"].append(score["missing_term"][1])
        if "nonparametric_kernel_gain" in score:
            row["kernel_gains"].append(score["nonparametric_kernel_gain"])
        if score["reliable"] and group == "wrong":
            row["unflagged"].append(f"{run['system']} seed {run['seed']}: {', '.join(score['selected'])}")
    for rows in table.values():
        for row in rows.values():
            for key in ("missing_term_gains", "kernel_gains", "affine_residuals"):
                values = sorted(row.pop(key))
                row[key + "_range"] = [values[0], values[-1]] if values else None
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="+", help="wsindy_suite.json files of scripts/wsindy_suite.py")
    parser.add_argument("--method", default="l0")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    runs = []
    for path in args.suites:
        runs.extend(json.loads(Path(path).read_text())["runs"])
    table = summarise(runs, args.method)
    for size, rows in table.items():
        for group, row in rows.items():
            print(f"{size} {group}: flagged {row['flagged']}/{row['runs']} (without this session's three checks "
                  f"{row['flagged_without_new_checks']}/{row['runs']}; flags by missing-term {row['missing_term_flags']}, "
                  f"kernel {row['kernel_flags']}, affine {row['affine_flags']}); ranges: largest missing-term gain "
                  f"{row['missing_term_gains_range']}, kernel gain {row['kernel_gains_range']}, affine residual "
                  f"{row['affine_residuals_range']}")
            for line in row["unflagged"]:
                print(f"    unflagged: {line}")
    write_json(Path(args.out) / "wsindy_suite_verdict.json",
               {"method": args.method, "thresholds": {"missing_term": MISSING_TERM_FACTOR, "kernel": KERNEL_FACTOR,
                                                          "affine_residual": AFFINE_RESIDUAL},
                "sources": args.suites, "table": table})
    print(f"wrote {Path(args.out) / 'wsindy_suite_verdict.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
