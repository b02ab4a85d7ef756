"""The check schema of scripts/_report.py, and every check call of the reproduce scripts and benches.

Each check is ``{"name", "value", "target", "pass", "baseline": {"name", "value", "pass"}}`` with
the baseline computed in the same run; a baseline that passes its own target marks a defect.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
CHECKED_SCRIPTS = sorted(SCRIPTS.glob("reproduce_*.py")) + sorted(SCRIPTS.glob("bench_*.py"))


def _load_report_module():
    spec = importlib.util.spec_from_file_location("_report_under_test", SCRIPTS / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_module = _load_report_module()


def _report(tmp_path):
    return report_module.Report("schema", argparse.Namespace(out=str(tmp_path), quick=True))


def test_predicate_judges_value_and_baseline_alike(tmp_path):
    report = _report(tmp_path)
    assert report.check("ratio", 0.5, "<= 1", lambda v: v <= 1, baseline=("standing still", 2.0))
    entry = report.checks[-1]
    assert entry["pass"] is True and entry["baseline"] == {"name": "standing still", "value": 2.0, "pass": False}
    assert report_module.schema_problems(entry) == [] and "defect" not in entry


def test_a_passing_baseline_is_a_defect(tmp_path):
    report = _report(tmp_path)
    report.check("ratio", 0.5, "<= 1", lambda v: v <= 1, baseline=("trivial", 0.9))
    entry = report.checks[-1]
    assert entry["baseline"]["pass"] is True
    assert "could not have failed" in entry["defect"]


def test_missing_or_unjudged_baseline_is_a_defect(tmp_path):
    report = _report(tmp_path)
    report.check("no baseline", 0.5, "<= 1", True)
    assert "missing key 'baseline'" in report.checks[-1]["defect"]
    report.check("unjudged baseline", 0.5, "<= 1", True, baseline=("trivial", 3.0))
    assert "unmeasured baseline" in report.checks[-1]["defect"]
    report.check("explicit verdicts", 0.5, "<= 1", True, baseline=("trivial", 3.0, False))
    assert "defect" not in report.checks[-1]


def test_nan_fails_and_skipped_lines_conform(tmp_path):
    report = _report(tmp_path)
    assert not report.check("nan value", float("nan"), "<= 1", lambda v: v <= 1, baseline=("trivial", 3.0))
    report.check("gpu line", None, "< 1 s", None, skipped="no CUDA device", baseline=("naive backend", None))
    entry = report.checks[-1]
    assert entry["pass"] is None and entry["baseline"]["pass"] is None
    assert report_module.schema_problems(entry) == []
    path = report.write()
    written = json.loads(path.read_text())
    assert [c["name"] for c in written["checks"]] == ["nan value", "gpu line"]


def test_bad_baseline_specifications_raise(tmp_path):
    report = _report(tmp_path)
    with pytest.raises(TypeError, match="baseline"):
        report.check("x", 1.0, "<= 1", True, baseline=3.0)
    with pytest.raises(ValueError, match="baseline"):
        report.check("x", 1.0, "<= 1", True, baseline={"value": 3.0})


def test_schema_problems_lists_each_fault():
    good = {"name": "a", "value": 1, "target": "<= 2", "pass": True,
            "baseline": {"name": "b", "value": 3, "pass": False}}
    assert report_module.schema_problems(good) == []
    assert report_module.schema_problems({**good, "pass": "yes"})
    assert report_module.schema_problems({**good, "pass": None})  # null without a skipped reason
    assert report_module.schema_problems({**good, "baseline": {"name": "b", "value": 3}})
    assert report_module.schema_problems({k: v for k, v in good.items() if k != "target"})


def _check_calls(path: Path):
    """Every ``<something>.check(...)`` call in a script, with its line number and keyword names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "check":
            yield node.lineno, {keyword.arg for keyword in node.keywords}


@pytest.mark.parametrize("script", CHECKED_SCRIPTS, ids=lambda p: p.name)
def test_every_check_of_the_script_names_a_baseline(script):
    calls = list(_check_calls(script))
    assert calls, f"{script.name}: no report.check calls found"
    missing = [line for line, keywords in calls if "baseline" not in keywords]
    assert not missing, f"{script.name}: report.check without baseline= at lines {missing}"


@pytest.mark.parametrize("script", CHECKED_SCRIPTS, ids=lambda p: p.name)
def test_no_check_is_a_bookkeeping_constant(script):
    """A check's value must be measured: a literal number or string as the value could not fail."""
    tree = ast.parse(script.read_text(), filename=str(script))
    constant = [node.lineno for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "check"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value is not None]
    assert not constant, f"{script.name}: check values that are literals at lines {constant}"


def _import_script(name):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"_{name}_under_test", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_nudging_split_holds_out_the_unassimilated_times():
    split_times = _import_script("reproduce_nudging").split_times
    times = [0.05 * i for i in range(41)]
    assimilated, held_out = split_times(times, 4, score_from=1.0)
    assert assimilated == list(range(0, 41, 4))
    assert not set(assimilated) & set(held_out)
    assert held_out[0] == 21 and all(times[i] >= 1.0 for i in held_out) and len(held_out) == 15


def test_lot_scores_before_equilibrium_against_the_better_trivial_answer(tmp_path):
    lot = _import_script("reproduce_lot")
    report = _report(tmp_path)
    rows = [{"t": 120.0, "floor": 0.26, "lot": 1.5, "standing_still": 3.4, "equilibrium_sample": 8.7},
            {"t": 240.0, "floor": 0.35, "lot": 1.8, "standing_still": 2.6, "equilibrium_sample": 4.2},
            {"t": 600.0, "floor": 0.39, "lot": 5.0, "standing_still": 1.0, "equilibrium_sample": 1.5}]
    lot.before_equilibrium_check(report, "box", rows)
    entry = report.checks[-1]
    # t = 600 is equilibrated (the uniform sample is within 2x the floor): not scored
    assert entry["value"] == 1.8 and entry["pass"] is True
    assert entry["baseline"]["value"] == 3.4 and entry["baseline"]["name"].startswith("standing still")
    assert entry["baseline"]["pass"] is False and report_module.schema_problems(entry) == []
    lot.before_equilibrium_check(report, "box", rows[2:])
    assert report.checks[-1]["pass"] is None and report_module.schema_problems(report.checks[-1]) == []


def test_lot_control_cache_returns_the_same_run_and_keys_on_the_system(tmp_path):
    import torch

    from torchmf import systems

    lot = _import_script("reproduce_lot")
    report = _report(tmp_path)
    integrator = lot.integrator(lot.box_protocol(True))
    times = torch.tensor([10.0, 20.0])
    box = systems.get("box_diffusion")
    first = lot.cached_control(report, integrator, box, "box_diffusion", 50, 2, times)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    again = lot.cached_control(report, integrator, box, "box_diffusion", 50, 2, times)
    fresh = integrator.control(lot.SystemSimulator(box, 50, seed=2), times)
    assert torch.equal(first, again) and torch.equal(first, fresh)
    slower = systems.get("box_diffusion", speed=0.05)
    lot.cached_control(report, integrator, slower, "box_diffusion", 50, 2, times)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # another system, another entry


def test_wsindy_convergence_check_fails_a_consistent_but_biased_baseline(tmp_path):
    """Least squares on the full library decays like N^-1/2 too: the slope alone would pass it, the level must not."""
    wsindy_script = _import_script("reproduce_wsindy")
    sizes = [4000, 8000, 16000, 32000, 64000, 128000]
    decay = [(n / sizes[0]) ** -0.5 for n in sizes]
    curve = {"N": sizes, "slope_K": -0.5, "slope_sigma": -0.48,
             "error_K": [0.005 * d for d in decay], "error_sigma": [0.02 * d for d in decay],
             "baseline_error_K_median_all_seeds": [3.0 * d for d in decay],
             "baseline_error_sigma_median_all_seeds": [0.5 * d for d in decay]}
    report = _report(tmp_path)
    wsindy_script.convergence_checks(report, curve, list(range(len(sizes))), 20, quick=False)
    for entry in report.checks:
        assert entry["pass"] is True and entry["baseline"]["pass"] is False
        assert entry["baseline"]["value"]["slope"] == pytest.approx(-0.5, abs=1e-3)  # the slope alone passes it
        assert report_module.schema_problems(entry) == [] and "defect" not in entry
    # a level above the tolerance fails the method too; no size with enough TPR = 1 seeds is NaN and fails
    curve["error_sigma"] = [0.2 * d for d in decay]
    wsindy_script.convergence_checks(report, curve, [], 20, quick=False)
    assert [entry["pass"] for entry in report.checks[-2:]] == [False, False]
    wsindy_script.convergence_checks(report, curve, list(range(len(sizes))), 20, quick=False)
    assert report.checks[-1]["pass"] is False and report.checks[-2]["pass"] is True
