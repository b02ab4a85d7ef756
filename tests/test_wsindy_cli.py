"""`torchmf identify` (issues 23, 24): units never guessed, the verdict line, the figure next to --json,
flags for every option users need, formatted --help examples."""
from __future__ import annotations

import json
import re

import matplotlib.image
import pytest
import torch

from torchmf import systems
from torchmf.cli import main


@pytest.fixture(scope="module")
def qanr(tmp_path_factory):
    data = systems.get("qanr_1d", diffusion="constant").simulate(n_particles=1000, seed=2, progress=False,
                                                                dtype=torch.float64)
    folder = tmp_path_factory.mktemp("identify")
    return data, data.save(folder / "qanr.h5")


def _table(data, path, time_column="frame", time_values=None):
    """Long-format tracks (particle, time column, x) of ``data``."""
    positions = data.positions[0, :61, :600, 0].numpy()  # (L, N): a small table reads fast
    length, count = positions.shape
    times = [str(t) for t in range(length)] if time_values is None else [repr(float(v)) for v in time_values]
    rows = [f"{p},{times[t]},{float(positions[t, p])!r}" for t in range(length) for p in range(count)]
    path.write_text(f"particle,{time_column},x\n" + "\n".join(rows) + "\n")
    return path


def test_frame_numbers_without_frame_dt_are_refused_in_one_line(qanr, tmp_path, capsys):
    data, _ = qanr
    table = _table(data, tmp_path / "tracks.csv")
    assert main(["identify", str(table), "--columns", "x"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--frame-dt" in error and "counts frames" in error and len(error.splitlines()) == 1
    step = float(data.times[1] - data.times[0])
    assert main(["identify", str(table), "--columns", "x", "--frame-dt", repr(step), "--ensemble", "0"]) == 0
    output = capsys.readouterr().out
    assert f"# units: time from column 'frame' x --frame-dt {step:g}" in output
    # the QANR kernel -|x| + |x|^2/2 in the right time unit (a guessed dt = 1 would scale it by 0.01)
    found = re.search(r"K\(x\) = (-?[\d.]+)\*\|x\|\^1 \+([\d.]+)\*\|x\|\^2", output)
    assert found and -1.25 < float(found.group(1)) < -0.8 and 0.4 < float(found.group(2)) < 0.6, output


def test_a_time_column_is_used_as_it_is_and_said_so(qanr, tmp_path, capsys):
    data, _ = qanr
    table = _table(data, tmp_path / "timed.csv", "t", data.times[:61].numpy())
    assert main(["identify", str(table), "--columns", "x", "--time", "t", "--ensemble", "0", "--no-plot"]) == 0
    assert "# units: time from the table's time column 't'" in capsys.readouterr().out


def test_verdict_line_json_and_figure(qanr, tmp_path, capsys):
    _, path = qanr
    target = tmp_path / "model.json"
    assert main(["identify", str(path), "--json", str(target)]) == 0
    output = capsys.readouterr().out
    figure = tmp_path / "model.png"
    assert "verdict: reliable (20 resamples agree" in output
    assert f"wrote {target} and the figure {figure}" in output
    image = matplotlib.image.imread(figure)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    saved = json.loads(target.read_text())
    assert saved["reliable"] is True and saved["reasons"] == []
    assert saved["inclusion_probabilities"]["K:|x|^1"] >= 0.9
    assert "# units: time from the file's 'times'" in output


def test_flags_reach_the_identification(qanr, tmp_path, capsys):
    _, path = qanr
    target = tmp_path / "paper.json"
    assert main(["identify", str(path), "--selection", "mstls", "--grid-rule", "intersection", "--ensemble", "5",
                 "--exempt", "D:x^0", "K:|x|^2", "--json", str(target), "--no-plot"]) == 0
    output = capsys.readouterr().out
    assert "mstls selection" in output and "verdict:" in output and "figure" not in output
    info = json.loads(target.read_text())["info"]
    assert info["selection"]["method"] == "mstls" and info["options"]["grid_rule"] == "intersection"
    assert info["options"]["exempt"] == ["K:|x|^2", "D:x^0"] and info["ensemble"]["resamples"] == 5
    assert not (tmp_path / "paper.png").exists()
    assert main(["identify", str(path), "--exempt", "K:|x|^9"]) == 2
    assert "exempt: ['K:|x|^9'] are not terms" in capsys.readouterr().err
    assert main(["identify", str(path), "--plot"]) == 2
    assert "--plot: the figure is written next to --json" in capsys.readouterr().err
    assert main(["identify", str(path), "--ensemble", "-1"]) == 2
    assert "--ensemble: expected an integer >= 0, but got -1" in capsys.readouterr().err


def test_help_examples_are_formatted_blocks(capsys):
    with pytest.raises(SystemExit):
        main(["identify", "--help"])
    text = capsys.readouterr().out
    assert "\n  a trackpy-style table whose time column counts frames (0.1 s between frames):\n" \
           "      torchmf identify tracks.csv --id particle --time frame --columns x y --frame-dt 0.1\n" in text
    for flag in ("--exempt", "--ensemble", "--grid-rule", "--selection", "--plot", "--no-plot", "--frame-dt"):
        assert flag in text
