"""The tutorial docs/own_data.md is a test: every ``python`` block runs, in order, in one namespace,
and every ``torchmf ...`` line of its ``bash`` blocks runs through the CLI and must exit 0, in a
fresh working folder. The page's own asserts are the checks (identified terms, nudged vs
un-nudged forecast, the raw microscope frames: refused with the floor in, W2 <= 0.5x the model
alone's with ``--background auto``, extrapolation vs the last snapshot, trained drift error)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own_data.md"
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)


def blocks():
    return BLOCK.findall(PAGE.read_text())


def test_the_page_has_the_whole_workflow():
    kinds = [kind for kind, _ in blocks()]
    text = PAGE.read_text()
    assert kinds.count("python") >= 5 and kinds.count("bash") >= 3
    for step in ("torchmf identify tracks.csv", "GridObservations.from_file", "torchmf nudge --observations",
                 "--background auto", "--psf", "extrapolate(", "torchmf lot --snapshots", "SlowPathDataModule(path=",
                 "my_fast_slow.SinFastSlow"):
        assert step in text, step


def test_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    from torchmf.cli import main

    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "own_data_tutorial"}
    for kind, code in blocks():
        if kind == "python":
            exec(compile(code, f"{PAGE.name}", "exec"), namespace)
            continue
        for line in code.splitlines():
            if line.startswith("torchmf "):
                assert main(shlex.split(line)[1:]) == 0, line
    assert (tmp_path / "model.json").is_file() and (tmp_path / "forecast.npz").is_file()
    assert (tmp_path / "runs" / "nudge" / "nudge.json").is_file()
    # the microscope section: raw uint16 frames in, the nudged run and its figure out
    assert (tmp_path / "raw_nudged.npz").is_file() and (tmp_path / "runs" / "raw" / "nudge.png").is_file()
