"""`torchmf lot --snapshots` (issue 22 item 3, issue 24's lot items): a forecast from the last frames with
its window, velocity error and figure named in the output; options checked before any work."""
import math

import numpy as np
import pytest
import torch

from torchmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _dilation_file(path, frames=21, n=150, rate=0.3, dt=0.05):
    generator = np.random.default_rng(0)
    x0 = generator.normal(size=(n, 2))
    positions = np.stack([x0 * math.exp(rate * j * dt) for j in range(frames)])
    np.savez(path, positions=positions, times=dt * np.arange(frames))
    return x0, rate, dt, frames


def test_snapshots_forecast_prints_window_and_writes_a_figure(tmp_path, capsys):
    source = tmp_path / "frames.npz"
    x0, rate, dt, frames = _dilation_file(source)
    output = tmp_path / "forecast.npz"
    assert main(["lot", "--snapshots", str(source), "--horizon", "0.1", "-o", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "window: the last 5 frames" in printed and "significant" in printed
    assert "times in the units of" in printed and "frame spacing 0.05" in printed  # units said, not guessed
    figure = output.with_suffix(".png")
    assert figure.exists() and figure.stat().st_size > 1000 and str(figure) in printed
    import matplotlib.image
    assert matplotlib.image.imread(figure).ndim == 3
    forecast = np.load(output)["positions"] if output.suffix == ".npz" else None
    truth = x0 * math.exp(rate * ((frames - 1) * dt + 0.1))
    assert np.linalg.norm(forecast[0, 0] - truth) / np.linalg.norm(truth) < 5e-3


def test_snapshots_refuse_run_only_options_before_work(tmp_path, capsys):
    source = tmp_path / "frames.npz"
    _dilation_file(source)
    assert main(["lot", "--snapshots", str(source), "--horizon", "0.1", "--particles", "10"]) == 2
    assert "--particles" in capsys.readouterr().err
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["lot", "--snapshots", str(source), "--horizon", "0.1", "-o", str(folder)]) == 2
    assert "-o/--output" in capsys.readouterr().err


def test_system_run_prints_each_step_with_its_error_and_units(tmp_path, capsys):
    out = tmp_path / "lot"
    assert main(["lot", "box_diffusion", "--particles", "200", "--k", "8", "--step", "2", "--burn-in", "0.5",
                 "--start-up", "1", "--n-steps", "2", "--recovery", "0.5", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("large step at t = ") == 2 and "+-" in printed
    assert "model units" in printed and str(out / "lot_box_diffusion_w2.png") in printed
    assert (out / "lot_box_diffusion_w2.png").stat().st_size > 1000
