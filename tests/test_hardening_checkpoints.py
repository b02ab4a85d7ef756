"""Issue 25: Lightning checkpoints survive a SIGKILL mid-write with ``TMPDIR`` on another filesystem,
resume refuses a truncated file with one line, and a checkpoint never chooses code.

The kill test forks the training process from this one (Lightning already imported: each start costs
a fraction of a second) with ``TMPDIR`` on ``/dev/shm`` (tmpfs) and the checkpoints on the disk the
test folder lives on. ``os.fsync`` is slowed to 0.15 s in the child (a slow disk), which keeps every
checkpoint write open long enough for the kill to land inside it: the test waits until a temporary
of ``last.ckpt`` is visible, then kills after a random delay of 0-0.05 s.
"""
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from torchmf import systems

SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def slow_path(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kill_data")
    data = systems.get("fastslow_cubic").simulate(t_end=4.0, seed=0, dtype=torch.float64, progress=False)
    return data.save(directory / "cubic.npz")


def write_config(directory: Path, data_path: Path, max_steps: int = 100000, name: str = "config.yaml") -> Path:
    run = directory / "run"
    text = f"""
seed_everything: 0
threads: 1
model:
  class_path: trainers.AveragedDynamicsModule
  init_args: {{system: fastslow_cubic, n_samples: 8, penalty_points: 16, hidden: 64, path_nodes: 32}}
data:
  class_path: trainers.SlowPathDataModule
  init_args: {{path: {data_path}, batch_size: 64, validation_fraction: 0.2, progress: false}}
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {max_steps}
  max_epochs: -1
  limit_val_batches: 0
  logger: false
  enable_model_summary: false
  enable_progress_bar: false
  default_root_dir: {run}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {run}/checkpoints, save_last: true, save_top_k: 0, every_n_train_steps: 1}}
"""
    path = directory / name
    path.write_text(text)
    return path


def _fork_training(arguments, temporary_folder: Path, slow_fsync: bool, lightning_writer: bool = False) -> int:
    """Run ``torchmf-train`` in a forked child; returns its pid. Output goes to /dev/null.

    ``lightning_writer``: the negative control, Lightning's own writer instead of AtomicCheckpointIO,
    with its cross-filesystem copy slowed like the fsync (4 KiB per 10 ms)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.environ["TMPDIR"] = str(temporary_folder)
        tempfile.tempdir = None  # fsspec's transaction and mkstemp now use the tmpfs folder
        if slow_fsync:
            real_fsync = os.fsync

            def slow(descriptor):  # a slow disk: keeps the write open for the kill
                time.sleep(0.15)
                real_fsync(descriptor)
            os.fsync = slow
        if lightning_writer:
            import trainers.checkpoint_io

            trainers.checkpoint_io.install_atomic_checkpoints = lambda trainer: None
            real_sendfile = os.sendfile

            def slow_copy(out_descriptor, in_descriptor, offset, count):
                time.sleep(0.01)
                return real_sendfile(out_descriptor, in_descriptor, offset, min(count, 4096))
            os.sendfile = slow_copy
        from trainers.cli import main

        code = main(list(arguments))
    finally:
        os._exit(code)


def _temporaries(folder: Path):
    return [p for p in folder.glob(".last.ckpt.*")] if folder.is_dir() else []


def _signature(path: Path):
    """(inode, mtime, size) of ``path``, None when absent: changes with every write or rename."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def _kill_cycles(config: Path, checkpoints: Path, temporary_folder: Path, kills: int, seed: int,
                 lightning_writer: bool = False):
    """``kills`` runs, each resumed from ``last`` and killed during a write of last.ckpt; returns
    (truncated count, kills that found the temporary still present, steps seen after each kill)."""
    from trainers.checkpoint_io import read_checkpoint

    generator = random.Random(seed)
    truncated, inside, steps = 0, 0, []
    for cycle in range(kills):
        extra = ["--ckpt_path", "last"] if (checkpoints / "last.ckpt").exists() else []
        pid = _fork_training(["fit", "-c", str(config), *extra], temporary_folder, slow_fsync=True,
                             lightning_writer=lightning_writer)
        deadline = time.time() + 60
        seen = None
        watched = (lambda: set(temporary_folder.iterdir())) if lightning_writer else \
            (lambda: set(_temporaries(checkpoints)))
        left_over = watched()  # temporaries of the killed runs: not this run's write
        start = _signature(checkpoints / "last.ckpt")
        while time.time() < deadline:
            found = watched() - left_over
            # a write while last.ckpt has changed since the start (so every cycle makes progress)
            if found and _signature(checkpoints / "last.ckpt") != start:
                seen = found
                break
            time.sleep(0.002)
        assert seen is not None, f"cycle {cycle}: no checkpoint write seen in 60 s"
        time.sleep(generator.uniform(0.0, 0.05))
        inside += any(path.exists() for path in seen)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            steps.append(read_checkpoint(checkpoints / "last.ckpt")["global_step"])
        except ValueError:
            truncated += 1
            break
    return truncated, inside, steps


@pytest.fixture
def temporary_folder(tmp_path):
    """A TMPDIR on tmpfs (/dev/shm), another filesystem than the checkpoints'; removed afterwards."""
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    folder = Path(tempfile.mkdtemp(dir=SHM, prefix="torchmf-tmpdir-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _run_kills(tmp_path, slow_path, temporary_folder, kills, seed):
    from trainers.checkpoint_io import read_checkpoint

    config = write_config(tmp_path, slow_path)
    checkpoints = tmp_path / "run" / "checkpoints"
    truncated, inside, steps = _kill_cycles(config, checkpoints, temporary_folder, kills, seed)
    assert truncated == 0, f"truncated last.ckpt after {len(steps)} whole ones"
    assert steps == sorted(steps) and steps[-1] > steps[0]  # every resume continued from the last whole one
    # resume from the last whole checkpoint runs to completion (two more steps)
    final = steps[-1] + 2
    resume = write_config(tmp_path, slow_path, max_steps=final, name="resume.yaml")
    pid = _fork_training(["fit", "-c", str(resume), "--ckpt_path", "last"], temporary_folder, slow_fsync=False)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == final
    assert not list(temporary_folder.iterdir()) and not _temporaries(checkpoints)  # nothing left over
    return inside, steps


def test_a_few_sigkills_during_checkpointing_leave_whole_checkpoints_and_resume(tmp_path, slow_path, temporary_folder):
    inside, steps = _run_kills(tmp_path, slow_path, temporary_folder, kills=3, seed=0)
    assert inside >= 2, f"only {inside} of 3 kills landed inside a write"


@pytest.mark.slow
def test_twenty_sigkills_during_checkpointing_tmpdir_on_tmpfs(tmp_path, slow_path, temporary_folder, capsys):
    inside, steps = _run_kills(tmp_path, slow_path, temporary_folder, kills=20, seed=1)
    with capsys.disabled():
        print(f"\n20 SIGKILLs: 0 truncated last.ckpt, {inside} inside a write, steps {steps}")
    assert inside >= 15


@pytest.mark.slow
def test_negative_control_lightning_writer_truncates_last_checkpoint(tmp_path, slow_path, temporary_folder, capsys):
    """The same kills with Lightning's own writer leave a truncated last.ckpt: the test above can fail."""
    config = write_config(tmp_path, slow_path)
    truncated, inside, steps = _kill_cycles(config, tmp_path / "run" / "checkpoints", temporary_folder, 20, seed=2,
                                            lightning_writer=True)
    with capsys.disabled():
        print(f"\nLightning's writer: truncated last.ckpt after {len(steps)} whole ones ({truncated} truncated)")
    assert truncated == 1


@pytest.mark.parametrize("name", ["last", "file"])
def test_resume_refuses_a_truncated_checkpoint_in_one_line(name, tmp_path, slow_path, capsys):
    from trainers.cli import main

    config = write_config(tmp_path, slow_path, max_steps=2)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    buffer = tmp_path / "whole.ckpt"
    torch.save({"global_step": 1, "state_dict": {"w": torch.zeros(1000)}}, buffer)
    (checkpoints / "last.ckpt").write_bytes(buffer.read_bytes()[:1500])  # cut inside the zip
    argument = "last" if name == "last" else str(checkpoints / "last.ckpt")
    code = main(["fit", "-c", str(config), "--ckpt_path", argument])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchmf-train: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "last.ckpt" in errors[0] and "truncated or corrupt (1500 bytes" in errors[0]
