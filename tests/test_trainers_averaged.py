"""torchmf-train with the averaged-dynamics modules: fit/resume/checkpoints/logs, one-line CLI
errors (exit 2), SIGKILL + ``--ckpt_path last`` resume, and DDP on 2 CPU processes (gloo)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchmf import systems

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def slow_path(tmp_path_factory):
    """A short observed path of fastslow_cubic (2000 transitions) as an npz Trajectories file."""
    directory = tmp_path_factory.mktemp("averaged")
    data = systems.get("fastslow_cubic").simulate(t_end=20.0, seed=0, dtype=torch.float64, progress=False)
    return data.save(directory / "cubic.npz")


def write_config(directory: Path, data_path: Path, *, module="trainers.AveragedDynamicsModule", max_steps=30,
                 every=5, batch_size=256, system="fastslow_cubic", extra_trainer="") -> Path:
    run = directory / "run"
    text = f"""
seed_everything: 0
threads: 1
model:
  class_path: {module}
  init_args: {{system: {system}, n_samples: 16, penalty_points: 32, learning_rate: 0.01}}
data:
  class_path: trainers.SlowPathDataModule
  init_args: {{path: {data_path}, batch_size: {batch_size}, validation_fraction: 0.2, progress: false}}
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {max_steps}
  max_epochs: 100
  val_check_interval: 1.0
  log_every_n_steps: 1
  enable_model_summary: false
  enable_progress_bar: false
  default_root_dir: {run}
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {run}, name: csv}}
    - class_path: lightning.pytorch.loggers.TensorBoardLogger
      init_args: {{save_dir: {run}, name: tensorboard}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {run}/checkpoints, filename: "best-{{step}}", monitor: val_nll, save_last: true,
                  every_n_train_steps: {every}}}
{extra_trainer}"""
    path = directory / "config.yaml"
    path.write_text(text)
    return path


def run_cli(capsys, *args):
    from trainers.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("torchmf-train: error:")]
    return code, errors, captured.err


@pytest.fixture(scope="module")
def fitted(slow_path, tmp_path_factory):
    """One in-process fit (shared by the checkpoint/log and the wrong-class tests)."""
    from trainers.cli import main

    directory = tmp_path_factory.mktemp("fit")
    config = write_config(directory, slow_path, max_steps=12, every=4)
    assert main(["fit", "-c", str(config)]) == 0
    return directory


def test_fit_writes_best_and_last_checkpoints_csv_and_tensorboard(fitted):
    checkpoints = sorted(p.name for p in (fitted / "run" / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    rows = list(csv.DictReader(open(next((fitted / "run" / "csv").rglob("metrics.csv")))))
    assert any(row.get("val_nll") for row in rows) and any(row.get("val_drift_error") for row in rows)
    assert list((fitted / "run" / "tensorboard").rglob("events.out.tfevents*"))
    state = torch.load(fitted / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 12 and state["torchmf_module_class"] == "trainers.averaged.AveragedDynamicsModule"


# -- one-line errors, exit status 2 ---------------------------------------------------------------------------
def _bad_npz(path: Path, positions: np.ndarray, times: np.ndarray) -> Path:
    header = json.dumps({"format": "torchmf.trajectories", "version": 1, "meta": {}})
    np.savez(path, header=np.array(header), positions=positions, times=times)
    return path


def test_cli_bad_inputs_give_one_line_and_exit_2(tmp_path, slow_path, fitted, capsys):
    cases = {}
    config = write_config(tmp_path, slow_path)
    cases["unknown system"] = (["fit", "-c", str(write_config(tmp_path / "s", slow_path, system="no_such_system")
                                                ) if (tmp_path / "s").mkdir() is None else ""], "system")
    cases["missing config"] = (["fit", "-c", str(tmp_path / "absent.yaml")], "absent.yaml")
    cases["missing data file"] = (["fit", "-c", str(config), "--data.init_args.path", str(tmp_path / "gone.npz")],
                                  "path")
    positions = np.zeros((1, 50, 1, 1))
    positions[0, 20, 0, 0] = np.nan
    nan_file = _bad_npz(tmp_path / "nan.npz", positions, np.arange(50.0) * 0.01)
    cases["NaN in the path"] = (["fit", "-c", str(config), "--data.init_args.path", str(nan_file)], "NaN")
    times = np.arange(50.0) * 0.01
    times[30] = times[29]
    flat_file = _bad_npz(tmp_path / "times.npz", np.zeros((1, 50, 1, 1)), times)
    cases["non-increasing times"] = (["fit", "-c", str(config), "--data.init_args.path", str(flat_file)], "times")
    other = write_config(tmp_path / "v", slow_path, module="trainers.VariationalAveragedDynamicsModule") \
        if (tmp_path / "v").mkdir() is None else None
    cases["checkpoint of another class"] = (["validate", "-c", str(other), "--ckpt_path",
                                             str(fitted / "run" / "checkpoints" / "last.ckpt")], "AveragedDynamicsModule")
    for name, (arguments, expected) in cases.items():
        code, errors, stderr = run_cli(capsys, *arguments)
        assert code == 2, name
        assert len(errors) == 1 and expected in errors[0], (name, stderr)
        assert "Traceback" not in stderr, name


# -- fault: SIGKILL mid-epoch, resume with --ckpt_path last ------------------------------------------------------
def test_resume_from_last_checkpoint_continues_training(fitted, slow_path, capsys):
    """Small default version of the fault test: ``--ckpt_path last`` continues from step 12 to 20."""
    config = fitted / "config.yaml"
    code, errors, stderr = run_cli(capsys, "fit", "-c", str(config), "--trainer.max_steps", "20", "--ckpt_path", "last")
    assert code == 0, stderr[-2000:]
    state = torch.load(fitted / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 20
    rows = list(csv.DictReader(open(sorted((fitted / "run" / "csv").rglob("metrics.csv"))[-1])))
    assert min(int(row["step"]) for row in rows if row.get("train_loss")) >= 12  # no restart from scratch


def _final_state(directory: Path):
    state = torch.load(directory / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = state["state_dict"]
    return state["global_step"], weights["model.theta"], weights["model.log_sigma"].exp()


def _cli(config: Path, *extra):
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    return [PYTHON, "-m", "trainers", "fit", "-c", str(config), *extra], environment


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, slow_path):
    # 1600 training transitions / batch 64 = 25 steps per epoch; 60 steps; a checkpoint every 4 steps
    settings = dict(max_steps=60, every=4, batch_size=64)
    reference_config = write_config(tmp_path / "reference", slow_path, **settings) \
        if (tmp_path / "reference").mkdir() is None else None
    command, environment = _cli(reference_config)
    subprocess.run(command, env=environment, check=True, timeout=300, capture_output=True)

    (tmp_path / "killed").mkdir()
    killed_config = write_config(tmp_path / "killed", slow_path, **settings)
    command, environment = _cli(killed_config)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and process.poll() is None:
        if last.exists():
            try:
                step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
            except Exception:  # being replaced right now
                step = 0
            if 28 <= step < 60:  # inside the second epoch
                process.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert killed_at is not None and process.returncode == -signal.SIGKILL
    assert killed_at % 25 != 0  # mid-epoch
    command, environment = _cli(killed_config, "--ckpt_path", "last")
    resumed = subprocess.run(command, env=environment, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference_step, reference_theta, reference_sigma = _final_state(tmp_path / "reference")
    step, theta, sigma = _final_state(tmp_path / "killed")
    assert step == reference_step == 60
    # within noise: different minibatch order after the restart, same optimum neighbourhood
    assert torch.allclose(theta, reference_theta, atol=0.1)
    assert torch.allclose(sigma, reference_sigma, rtol=0.05)
    # the resumed run continued from the checkpoint instead of starting again
    rows = list(csv.DictReader(open(sorted((tmp_path / "killed" / "run" / "csv").rglob("metrics.csv"))[-1])))
    first_step = min(int(row["step"]) for row in rows if row.get("train_loss"))
    assert first_step >= killed_at - 1


# -- distributed: 2 CPU processes (gloo) against 1 process -------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, slow_path):
    results = {}
    for name, devices, batch in (("single", 1, 128), ("ddp", 2, 64)):  # same global batch
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name, slow_path, max_steps=30, every=10, batch_size=batch)
        command, environment = _cli(config, "--trainer.strategy", "ddp", "--trainer.devices", str(devices),
                                    "--model.init_args.slow_learning_rate_factor", "1.0")
        finished = subprocess.run(command, env=environment, timeout=400, capture_output=True, text=True)
        assert finished.returncode == 0, finished.stderr[-2000:]
        results[name] = _final_state(tmp_path / name)
    (step_one, theta_one, sigma_one), (step_two, theta_two, sigma_two) = results["single"], results["ddp"]
    assert step_one == step_two == 30
    # compare the learned drift F(x) = (a - 1.5 b tau^2) x - b x^3 on [-1, 1] (a and b alone are correlated)
    grid = torch.linspace(-1, 1, 41)
    drift_one = (theta_one[0] - 1.5 * theta_one[1]) * grid - theta_one[1] * grid**3
    drift_two = (theta_two[0] - 1.5 * theta_two[1]) * grid - theta_two[1] * grid**3
    assert float((drift_one - drift_two).norm() / drift_one.norm()) < 0.15
    assert torch.allclose(sigma_one, sigma_two, rtol=0.03)


def test_auto_likelihood_uses_the_whole_path_for_one_slow_dimension(slow_path):
    from trainers.averaged import AveragedDynamicsModule, fit_quietly
    from trainers.slow_path_data import SlowPathDataModule

    torch.set_num_threads(1)
    fitted = {}
    for kind in ("auto", "minibatch"):
        data = SlowPathDataModule(path=str(slow_path), batch_size=64, progress=False)
        module = AveragedDynamicsModule(n_samples=8, penalty_points=8, likelihood=kind, penalty_warmup=0.5)
        fit_quietly(module, data, 4)
        fitted[kind] = module
    statistics = fitted["auto"].path_statistics
    assert statistics is not None and statistics.count == fitted["auto"].trainer.datamodule.n_train_transitions
    assert fitted["minibatch"].path_statistics is None
    # the whole-path term equals the mean EM likelihood of every training transition (F linear between nodes)
    x, dx, dt = fitted["auto"].trainer.datamodule.train_set.tensors
    model = fitted["auto"].model
    with torch.no_grad():
        constant = torch.full((statistics.nodes.shape[0], 1), 0.3)
        from torchmf.averaging import em_negative_log_likelihood
        direct = em_negative_log_likelihood(dx.double(), dt.double(), torch.full_like(dx, 0.3).double(),
                                            torch.full_like(dx, 0.3).double(), model.sigma.double()).mean()
        assert float(statistics.mean_nll(constant.double(), constant.double(), model.sigma.double())) == \
            pytest.approx(float(direct), rel=1e-9)
    assert not any("nodes" in key for key in fitted["auto"].state_dict())
