"""Sharded ensembles on torch.distributed (gloo, 2 CPU processes) give the one-process result."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchmf import Trajectories, systems, wsindy
from torchmf.distributed import shard_slice
from torchmf.grid import Grid
from torchmf.interaction import InteractionForce
from torchmf.kernels import GaussianKernel, PeriodicKernel, PowerPotential
from torchmf.nudging import NudgedSDE, ParticleObservations
from torchmf.sde import McKeanVlasovSDE
from torchmf.wsindy import histogram

ROOT = Path(__file__).resolve().parents[1]


def force_module(kind, sharded, grid_size=128):
    if kind == "grid":
        kernel = PeriodicKernel(GaussianKernel(0.3, 2), 4.0)
        return InteractionForce(kernel, "grid", grid=Grid(0, 4, grid_size, periodic=True, dim=2), sharded=sharded)
    if kind == "quadratic":
        return InteractionForce(PowerPotential(2, 0.75), "pairwise", sharded=sharded)
    return InteractionForce(GaussianKernel(0.3, 2), "pairwise", sharded=sharded)


def particles(n):
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 4


CASES = {"grid": 200_000, "quadratic": 20_000, "pairwise": 3_000}
NUDGE_N = 40_000
WSINDY_N = 2_000


def nudging_case():
    """Forecast particles (1, N, 2) and observed snapshots (2, N, 2) at times 0 and 1 (free-space grid)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, NUDGE_N, 2, generator=generator)
    observed = torch.randn(2, NUDGE_N, 2, generator=generator) * 0.8 + torch.tensor([0.5, -0.2])
    return x, observed


def nudged_velocity(x, observed, sharded):
    """Velocity at t = 0.5 (linear rule) and the sub-steps one step of dt = 0.05 takes."""
    observations = ParticleObservations(observed, times=[0.0, 1.0], interpolation="linear")
    model = NudgedSDE(McKeanVlasovSDE(2, diffusion=0.0), observations, 0.3, 50.0, grid_shape=128, sharded=sharded)
    velocity = model.velocity(0.5, x)
    model.step(0.45, x, 0.05, None)
    return velocity, model.last_substeps


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for kind, n in CASES.items():
            local = particles(n)[shard_slice(n)]
            torch.save(force_module(kind, True)(local), Path(out_dir) / f"{kind}{rank}.pt")
        x, observed = nudging_case()
        share = shard_slice(NUDGE_N)
        velocity, substeps = nudged_velocity(x[:, share], observed[:, share], True)
        torch.save({"velocity": velocity, "substeps": torch.tensor(substeps)}, Path(out_dir) / f"nudge{rank}.pt")
        try:  # ranks disagreeing on the grid: a clear error on every rank, no hang
            force_module("grid", True, grid_size=64 if rank == 0 else 128)(particles(1000)[shard_slice(1000)])
        except ValueError as error:
            (Path(out_dir) / f"mismatch{rank}.error").write_text(str(error))
        try:  # ranks disagreeing on the system of a sharded simulation
            from torchmf.commands.simulate import simulate_local

            simulate_local({"system": "ou_linear" if rank == 0 else "double_well", "particles": 100, "t_end": 0.01},
                           progress=False)
        except ValueError as error:
            (Path(out_dir) / f"system{rank}.error").write_text(str(error))
        wsindy_worker(rank, out_dir)
    finally:
        dist.destroy_process_group()


def wsindy_data():
    return systems.get("qanr_1d", diffusion="none").simulate(n_particles=WSINDY_N, seed=0, progress=False,
                                                            dtype=torch.float64)


def wsindy_worker(rank, out_dir):
    """Sharded WSINDy: the histogram, the default grid and the model of each rank's half of the data."""
    data = wsindy_data()
    share = data.positions[:, :, shard_slice(WSINDY_N)]
    model = wsindy.identify(share, "qanr_1d", times=data.times, test_functions="qanr_1d", sharded=True)
    density = histogram(share, model.grid, sharded=True, crop=True)  # the default grid may crop the tails
    torch.save({"coefficients": model.coefficients, "density": density}, Path(out_dir) / f"wsindy{rank}.pt")
    bad = share.clone()
    if rank == 1:
        bad[0, 3, 0, 0] = float("nan")
    try:  # NaN on one rank only: every rank raises, nobody waits in the histogram's all-reduce
        wsindy.identify(bad, "qanr_1d", times=data.times, sharded=True)
    except ValueError as error:
        (Path(out_dir) / f"wsindy_nan{rank}.error").write_text(str(error))


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    mp.start_processes(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True, start_method="spawn")
    return out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_two_processes_match_one(sharded_results, kind):
    n = CASES[kind]
    sharded = torch.cat([torch.load(sharded_results / f"{kind}{r}.pt", weights_only=True) for r in range(2)])
    single = force_module(kind, False)(particles(n))
    difference = float((sharded - single).norm() / single.norm())
    assert difference <= 1e-5, difference


def test_sharded_nudging_velocity_matches_one_process(sharded_results):
    parts = [torch.load(sharded_results / f"nudge{r}.pt", weights_only=True) for r in range(2)]
    sharded = torch.cat([part["velocity"] for part in parts], dim=1)
    single, substeps = nudged_velocity(*nudging_case(), False)
    assert float((sharded - single).norm() / single.norm()) <= 1e-5
    assert [int(part["substeps"]) for part in parts] == [substeps, substeps]  # every rank takes the same sub-steps


def test_ranks_disagreeing_on_the_grid_fail_clearly_without_hanging(sharded_results):
    for rank in range(2):
        message = (sharded_results / f"mismatch{rank}.error").read_text()
        assert "grid" in message and "disagree" in message
    for rank in range(2):
        message = (sharded_results / f"system{rank}.error").read_text()
        assert message.startswith("recipe: processes disagree")


def test_shard_slice_covers_everything_once():
    pieces = [shard_slice(10, r, 3) for r in range(3)]
    assert [(p.start, p.stop) for p in pieces] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="n"):
        shard_slice(2, 0, 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_simulate_writes_one_dataset(tmp_path):
    output = tmp_path / "ou.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "torchmf", "simulate",
               "ou_linear", "-o", str(output), "--particles", "1001", "--t-end", "0.5", "--seed", "2", "--no-progress"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    data = Trajectories.load(output)
    assert data.positions.shape == (1, 11, 1001, 1)
    assert data.meta["processes"] == 2
    assert not list(tmp_path.glob(".ou.h5*"))  # no temporary file left behind
    # the coupling is global: the sharded ensemble's variance follows the closed form
    from torchmf import systems

    variance = float(data.positions[0, -1].double().var())
    assert abs(variance / float(systems.get("ou_linear").variance(0.5)) - 1) < 0.15


def _torchrun(arguments, cwd, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "torchmf", *arguments]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=cwd, env=environment)


def test_torchrun_nudge_shards_and_writes_one_dataset(tmp_path):
    import json

    arguments = ["nudge", "ou_linear", "--param", "a=5", "--particles", "2000", "--t-end", "0.5", "--no-progress"]
    result = _torchrun(arguments + ["--out", str(tmp_path / "two"), "-o", str(tmp_path / "two.h5")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "torchmf", *arguments, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr[-2000:]
    data = Trajectories.load(tmp_path / "two.h5")
    assert data.positions.shape == (1, 11, 2000, 1) and data.meta["processes"] == 2
    assert not list(tmp_path.glob(".two.h5*"))
    two = json.loads((tmp_path / "two" / "nudge.json").read_text())["summary"]
    one = json.loads((tmp_path / "one" / "nudge.json").read_text())["summary"]
    # different noise streams (rank r: seed + r), same law: the nudged W2 to the reference agrees
    # within sampling noise (measured 0.041 with one process) and both are far below the biased run
    for summary in (one, two):
        assert summary["lambda=100"]["final"] < 0.4 * summary["biased"]["final"]
    assert abs(two["lambda=100"]["time_averaged"] / one["lambda=100"]["time_averaged"] - 1) < 0.5


def test_cli_rejects_cuda_where_there_is_none(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    commands = (["simulate", "ou_linear", "-o", str(tmp_path / "x.h5"), "--device", "cuda"],
                ["nudge", "ou_linear", "--out", str(tmp_path / "nudge"), "--device", "cuda:0"])
    for arguments in commands:
        result = subprocess.run([sys.executable, "-m", "torchmf", *arguments], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 2
        assert "device: CUDA was asked for" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.h5")) and not (tmp_path / "nudge").exists()


def test_sharding_bad_inputs_name_the_argument():
    from torchmf.distributed import check_device

    x, observed = nudging_case()
    observations = ParticleObservations(observed[:, :100], times=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"^sharded: .*backend='grid'"):
        NudgedSDE(McKeanVlasovSDE(2), observations, 0.3, 1.0, backend="pairwise", sharded=True)
    with pytest.raises(TypeError, match=r"^sharded:"):
        NudgedSDE(McKeanVlasovSDE(2), observations, 0.3, 1.0, sharded="yes")
    with pytest.raises(ValueError, match=r"^device: expected a torch device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: CUDA was asked for"):
            check_device("cuda:1")


def test_sharded_wsindy_matches_one_process(sharded_results):
    parts = [torch.load(sharded_results / f"wsindy{r}.pt", weights_only=True) for r in range(2)]
    data = wsindy_data()
    single = wsindy.identify(data, "qanr_1d", test_functions="qanr_1d")
    density = histogram(data.positions, single.grid, crop=True)
    for part in parts:  # every rank holds the pooled histogram and the same model as one process
        assert float((part["density"] - density).abs().max() / density.abs().max()) <= 1e-12
        assert torch.allclose(part["coefficients"], single.coefficients, rtol=1e-9, atol=1e-12)
    # drift terms exactly; the constant diffusion is kept >= 0 by the constrained regression (tiny here)
    assert set(single.selected) - {"D:x^0"} == {"K:|x|^1", "K:|x|^2"} and single.selected.get("D:x^0", 0) < 1e-4


def test_nan_on_one_rank_fails_on_every_rank(sharded_results):
    assert "NaN" in (sharded_results / "wsindy_nan1.error").read_text()
    assert (sharded_results / "wsindy_nan0.error").read_text().startswith("rank 1 rejected its share of the data")
