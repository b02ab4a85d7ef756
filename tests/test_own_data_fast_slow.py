"""Your own fast-slow system (docs/own_data.md): the documented example file docs/examples/my_fast_slow.py,
named by ``class_path`` in the page's minimal config, simulated, trained and predicted in a fresh
interpreter through ``torchmf-train``'s own entry point; the checkpoint lands where the page says
(``lightning_logs/version_0/checkpoints/`` under the working folder), the predictions and their
figure (drift over the data's binned band) are written, and the trained drift beats the untrained one
against the closed form F(x) = -a x + b sin x.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE = REPOSITORY / "docs" / "examples" / "my_fast_slow.py"
PAGE = REPOSITORY / "docs" / "own_data.md"

RUN = '''
import json, sys, numpy as np, torch
from my_fast_slow import SinFastSlow
from trainers.cli import main

path = SinFastSlow().simulate(t_end=20.0, record_dt=0.01, seed=0, progress=False, dtype=torch.float64)
np.savetxt("series.csv", np.stack([path.times.numpy(), path.positions[0, :, 0, 0].numpy()], 1), delimiter=",",
           header="time,x", comments="")
common = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
assert main(["fit", "-c", "my_config.yaml", "--trainer.max_steps", "300"] + common) in (0, None)
checkpoint = sorted(__import__("glob").glob("lightning_logs/version_0/checkpoints/*.ckpt"))[-1]
predict = ["predict", "-c", "my_config.yaml", "--ckpt_path", checkpoint, "--predictions", "drift.npz"]
assert main(predict + common) in (0, None)
from trainers import AveragedDynamicsModule
system = SinFastSlow()
path_x = path.positions[0, :, 0, 0]
x = torch.linspace(float(path_x.quantile(0.05)), float(path_x.quantile(0.95)), 61).unsqueeze(-1)  # where the path went
truth = system.averaged_drift(x.double()).squeeze(-1)
trained = AveragedDynamicsModule.load_from_checkpoint(checkpoint, weights_only=True, map_location="cpu")
untrained = AveragedDynamicsModule(system={"class_path": "my_fast_slow.SinFastSlow"}, density="gaussian",
                                   theta_init=[0.5, 0.5])
errors = {}
for name, module in (("trained", trained), ("untrained", untrained)):
    with torch.no_grad():
        drift = module.model.drift(x.float()).squeeze(-1).double()
    errors[name] = float((drift - truth).norm() / truth.norm())
print(json.dumps({"checkpoint": checkpoint, "system": trained.model.system.registered_name, **errors}))
'''


def _config() -> str:
    """The minimal config of the page (its ``yaml`` block that names my_fast_slow.SinFastSlow)."""
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.DOTALL)
    chosen = [block for block in blocks if "my_fast_slow.SinFastSlow" in block]
    assert chosen, "docs/own_data.md: no yaml block names my_fast_slow.SinFastSlow"
    return chosen[0]


def test_the_protocol_is_exported_and_the_example_implements_it():
    from torchmf.averaging import FastSlowSystem
    from torchmf.systems.fastslow import FastSlowSystem as defined

    assert FastSlowSystem is defined
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_fast_slow", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    system = example.SinFastSlow(a=1.0, b=2.0)
    assert isinstance(system, FastSlowSystem) and system.parameter_names == ["a", "b"]
    import torch

    x = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(-1)
    y = system.sample_invariant(x, 20000, torch.Generator().manual_seed(0))  # (9, 20000, 1)
    averaged = system.slow_drift(x.unsqueeze(1), y, system.true_theta).mean(1)  # Monte Carlo of E[f(x, Y)]
    assert torch.allclose(averaged, system.averaged_drift(x), atol=0.03)  # F = -a x + b sin x, SE 0.01
    text = PAGE.read_text()
    for name in ("slow_drift", "fast_drift", "parameter_names", "fast_dim", "sample_invariant", "averaged_drift",
                 "lightning_logs/version_0/checkpoints", "docs/examples/my_fast_slow.py"):
        assert name in text, name


@pytest.mark.slow  # one fresh interpreter importing Lightning, 300 steps, predict: about 20-70 s on 2 shared cores
def test_a_user_system_by_class_path_trains_and_predicts_in_a_fresh_process(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "my_fast_slow.py")
    (tmp_path / "my_config.yaml").write_text(_config())
    (tmp_path / "run.py").write_text(RUN)
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPOSITORY)]))
    environment.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=environment, text=True, capture_output=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["checkpoint"].startswith("lightning_logs/version_0/checkpoints/")
    assert summary["system"] == "my_fast_slow.SinFastSlow"
    # relative L2 to F(x) = -a x + b sin x over the visited range: measured 0.150 trained, 1.889 untrained
    assert summary["trained"] < 0.3 and summary["trained"] < 0.25 * summary["untrained"], summary
    with np.load(tmp_path / "drift.npz") as written:
        assert written["x"].shape == (2000, 1) and written["prediction"].shape == (2000, 1)
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "drift.png").shape[0] > 100
    assert "wrote drift.npz: 2000 predictions and drift.png" in result.stdout


def test_the_prediction_figure_band_is_the_binned_mean_and_its_standard_error():
    from trainers.prediction_writer import binned_drift

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    rates = -2 * x + rng.normal(scale=3.0, size=x.size)
    centres, means, errors = binned_drift(x, rates, bins=10)
    assert centres.shape == (10,)
    assert np.all(np.abs(means - (-2 * centres)) < 4 * errors + 0.2)  # linear drift: bin mean ~ drift at centre
    assert np.allclose(errors, 3.0 / np.sqrt(2000), rtol=0.15)  # sigma / sqrt(n per bin)
