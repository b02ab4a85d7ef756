"""Report convention shared by every scripts/reproduce_*.py and scripts/bench_*.py.

``Report(name, args)`` collects ``settings``, ``metrics`` and ``checks`` and writes
``OUT/<name>.json`` atomically: ``{"name", "device", "torch", "settings", "metrics", "checks"}``.

A check is one acceptance line measured by the script::

    {"name", "value", "target", "pass", "baseline": {"name", "value", "pass"}}

The baseline is the trivial answer computed in the same run (no nudging, standing still, a fresh
sample of the equilibrium law, least squares on the full library, the untrained model, the naive
backend...) judged by the same target. A check whose baseline also passes could not have failed:
it is recorded with ``"defect"`` and printed as such; change the check until the baseline fails.
Lines this machine cannot measure carry ``"pass": None`` and a ``"skipped"`` reason (their
baseline may be unmeasured too). Bookkeeping identities go to ``metrics``, never to checks.

Usage, with the target as a predicate so that value and baseline are judged alike::

    report.check("final W2 / floor", ratio, "<= 2", lambda v: v <= 2,
                 baseline=("un-nudged biased model", biased_ratio))
"""
from __future__ import annotations

import argparse
import math
import numbers
import platform
import sys
from pathlib import Path
from typing import Callable, List, Union

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchmf.data.files import write_json  # noqa: E402

__all__ = ["Report", "standard_parser", "device_name", "baseline", "schema_problems", "CHECK_KEYS",
           "BASELINE_KEYS"]

CHECK_KEYS = ("name", "value", "target", "pass", "baseline")
BASELINE_KEYS = ("name", "value", "pass")


def device_name(device=None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def standard_parser(description: str) -> argparse.ArgumentParser:
    """``--out DIR`` (default runs/) and ``--quick``; scripts add their own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="runs", help="output folder (default runs/)")
    parser.add_argument("--quick", action="store_true", help="small sizes, same checks, looser tolerances")
    return parser


def _judge(test, value):
    """``test(value)`` as a bool; None (unmeasured) stays None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(test(value))


def baseline(name: str, value, passed=None) -> dict:
    """A baseline entry ``{"name", "value", "pass"}``; ``passed`` may be left to the check's predicate."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"baseline name: expected a non-empty string, got {name!r}")
    return {"name": name, "value": value, "pass": None if passed is None else bool(passed)}


def _as_baseline(spec, test) -> dict:
    """Accept ``(name, value)``, ``(name, value, passed)`` or a dict; judge it with ``test`` where not given."""
    extra = {}
    if isinstance(spec, dict):
        missing = [key for key in ("name", "value") if key not in spec]
        if missing:
            raise ValueError(f"baseline: expected keys name and value, missing {missing} in {spec!r}")
        name, value, given = spec["name"], spec["value"], spec.get("pass")
        extra = {k: v for k, v in spec.items() if k not in BASELINE_KEYS}
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        name, value, given = spec[0], spec[1], (spec[2] if len(spec) == 3 else None)
    else:
        raise TypeError(f"baseline: expected (name, value[, passed]) or a dict, got {spec!r}")
    if given is None and test is not None:
        given = _judge(test, value)
    entry = baseline(name, value, given)
    entry.update(extra)
    return entry


def schema_problems(check: dict) -> List[str]:
    """What is wrong with one check entry under the convention above (empty list: conforms)."""
    problems = [f"missing key {key!r}" for key in CHECK_KEYS if key not in check]
    if problems:
        return problems
    name = check["name"]
    if not isinstance(name, str) or not name:
        problems.append("name is not a non-empty string")
    if not isinstance(check["target"], str) or not check["target"]:
        problems.append("target is not a non-empty string")
    if check["pass"] not in (True, False, None):
        problems.append(f"pass is {check['pass']!r}, expected true, false or null")
    if check["pass"] is None and not check.get("skipped"):
        problems.append("pass is null without a 'skipped' reason")
    base = check["baseline"]
    if not isinstance(base, dict):
        return problems + [f"baseline is {type(base).__name__}, expected a dict"]
    problems += [f"baseline misses key {key!r}" for key in BASELINE_KEYS if key not in base]
    if problems:
        return problems
    if base["pass"] not in (True, False, None):
        problems.append(f"baseline pass is {base['pass']!r}, expected true, false or null")
    if check["pass"] is not None:
        if base["pass"] is None:
            problems.append("a measured check with an unmeasured baseline")
        elif base["pass"]:
            problems.append("the trivial baseline also passes the target (the check could not have failed)")
    return problems


class Report:
    def __init__(self, name: str, args=None, device=None):
        self.name = name
        self.out = Path(getattr(args, "out", "runs"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device_name(device)
        self.settings = {"quick": bool(getattr(args, "quick", False))}
        self.metrics = {}
        self.checks = []

    def check(self, name: str, value, target: str, passed: Union[bool, None, Callable], skipped: str = None,
              baseline=None) -> bool:
        """Record an acceptance line.

        ``passed``: a bool, None (with ``skipped``) for lines not measurable here, or a predicate
        ``value -> bool`` applied to both ``value`` and the baseline's value. ``baseline``:
        ``(name, value)``, ``(name, value, passed)`` or a dict (see ``baseline()``).
        """
        test = passed if callable(passed) else None
        verdict = _judge(test, value) if test is not None else (None if passed is None else bool(passed))
        if skipped:
            verdict = None
        entry = {"name": name, "value": value, "target": target, "pass": verdict}
        if skipped:
            entry["skipped"] = skipped
        if baseline is not None:
            entry["baseline"] = _as_baseline(baseline, test)
        problems = schema_problems(entry)
        if problems:
            entry["defect"] = "; ".join(problems)
        self.checks.append(entry)
        status = "SKIP" if verdict is None else ("PASS" if verdict else "FAIL")
        line = f"[{status}] {name}: {_short(value)} (target {target})"
        if "baseline" in entry:
            base = entry["baseline"]
            base_status = "n/a" if base["pass"] is None else ("passes" if base["pass"] else "fails")
            line += f"; baseline {base['name']}: {_short(base['value'])} ({base_status})"
        print(line, flush=True)
        if problems:
            print(f"[DEFECT] {name}: {entry['defect']}", flush=True)
        return bool(verdict)

    def path(self, filename: str) -> Path:
        """Where a figure of this report goes (beside the JSON)."""
        return self.out / filename

    def write(self) -> Path:
        data = {"name": self.name, "device": self.device, "torch": torch.__version__, "settings": self.settings,
                "metrics": self.metrics, "checks": self.checks}
        path = write_json(self.out / f"{self.name}.json", data)
        print(f"wrote {path}")
        return path


def _short(value):
    """A printable value: floats to 4 significant digits."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{float(value):.4g}"
    return value
