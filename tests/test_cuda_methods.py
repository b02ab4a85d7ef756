"""Each method on CUDA (one short run) and CPU/CUDA agreement of the grid force, the transport map
and the WSINDy coefficients.

Every test that needs a GPU is marked ``cuda`` (``pytest -m cuda`` on a GPU machine; conftest skips
them elsewhere with a reason). The short runs take a ``device`` parameter, so the same test body
also runs on CPU here: that is what checks the code paths on a machine without a GPU.
"""
import pytest
import torch

from torchmf import systems

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def relative(a, b):
    return float((a - b).norm() / b.norm())


# -- one short run of each method --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_nudging_runs_on_the_device_and_pulls_towards_the_reference(device):
    from torchmf.metrics import w2
    from torchmf.nudging import NudgedSDE, ParticleObservations

    reference_system, biased_system = systems.get("ou_linear"), systems.get("ou_linear", a=5.0)
    reference = reference_system.simulate(n_particles=2000, t_end=0.5, seed=0, device=device, progress=False)
    assert reference.positions.device.type == device
    observations = ParticleObservations(reference.positions, times=reference.times, interpolation="linear")
    errors = {}
    for strength in (0.0, 100.0):
        model = NudgedSDE(biased_system.sde, observations, 0.2, strength)
        run = model.simulate(reference.positions[:, 0], reference.times, reference_system.default_dt, seed=1,
                             progress=False)
        assert run.positions.device.type == device and torch.isfinite(run.positions).all()
        errors[strength] = float(w2(run.positions[0, -1], reference.positions[0, -1]))
    assert errors[100.0] < 0.5 * errors[0.0]  # CPU: 0.04 vs 0.21 (torchmf nudge ou_linear --param a=5)


@pytest.mark.parametrize("device", DEVICES)
def test_transport_lot_velocity_and_one_projective_step_on_the_device(device):
    from torchmf.lot import ProjectiveIntegrator, SystemSimulator, lot_velocity
    from torchmf.transport import transport_map

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 2, generator=generator).to(device)
    shift = torch.tensor([0.3, -0.2], device=device)
    y = (x + shift)[torch.randperm(1500, generator=generator).to(device)]
    for method in ("sinkhorn-online", "sinkhorn"):
        mapped = transport_map(x, y, method)
        assert mapped.device.type == device
        assert relative(mapped - x, shift.expand_as(x)) < 0.02, method
    # a translation at unit speed: the LOT velocity is the shift per unit time
    window = torch.stack([x + j * shift for j in (-1, 0, 1)])
    velocity = lot_velocity(window, 1.0, method="sinkhorn-online")
    assert velocity.device.type == device and relative(velocity, shift.expand_as(x)) < 0.02
    simulator = SystemSimulator(systems.get("box_diffusion"), 400, seed=0, device=device)
    run = ProjectiveIntegrator(k=1, step=4 * simulator.dt, burn_in=simulator.dt, start_up=simulator.dt, n_steps=1,
                               recovery=0.0, method="sinkhorn-online", progress=False).run(simulator)
    assert run.positions.device.type == device and torch.isfinite(run.positions).all()
    assert run.stages.count("euler") == 1


@pytest.mark.parametrize("device", DEVICES)
def test_wsindy_identifies_qanr_on_the_device(device):
    from torchmf import wsindy

    data = systems.get("qanr_1d", diffusion="none").simulate(n_particles=2000, seed=0, progress=False,
                                                            dtype=torch.float64, device=device)
    model = wsindy.identify(data, "default")
    # drift terms exactly; the constant diffusion is kept >= 0 by the constrained regression (tiny here)
    assert set(model.selected) - {"D:x^0"} == {"K:|x|^1", "K:|x|^2"} and model.selected.get("D:x^0", 0) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_lightning_fit_of_the_shipped_config_on_the_accelerator(device, tmp_path, monkeypatch):
    """The shipped trainers config, unchanged but for the accelerator, a short run and a small path."""
    from pathlib import Path

    from trainers.cli import main

    root = Path(__file__).resolve().parents[1]
    data = systems.get("fastslow_cubic").simulate(t_end=5.0, seed=0, dtype=torch.float64, progress=False)
    path = data.save(tmp_path / "cubic.npz")
    monkeypatch.chdir(tmp_path)  # the config writes runs/train/... relative to the working directory
    code = main(["fit", "-c", str(root / "trainers/configs/fastslow_cubic_flow.yaml"),
                 f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.max_steps=4",
                 "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
                 f"--data.init_args.path={path}", "--data.init_args.batch_size=64",
                 "--model.init_args.n_samples=8", "--model.init_args.penalty_points=16"])
    assert code == 0
    last = tmp_path / "runs/train/fastslow_cubic_flow/checkpoints/last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4


# -- CPU / CUDA agreement --------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_grid_force_cpu_and_cuda_agree():
    from torchmf.grid import Grid
    from torchmf.interaction import InteractionForce
    from torchmf.kernels import GaussianKernel, PeriodicKernel

    x = torch.rand(200_000, 2, generator=torch.Generator().manual_seed(0)) * 4
    force = InteractionForce(PeriodicKernel(GaussianKernel(0.3, 2), 4.0), "grid",
                             grid=Grid(0, 4, 256, periodic=True, dim=2))
    cpu = force(x)
    for method in ("atomic", "sorted"):
        force.deposit_method = method
        gpu = force(x.cuda())
        assert gpu.device.type == "cuda" and relative(gpu.cpu(), cpu) <= 1e-5, method


@pytest.mark.cuda
def test_transport_map_cpu_and_cuda_agree():
    from torchmf.transport import sinkhorn_potentials, transport_map

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(3000, 2, generator=generator, dtype=torch.float64) * 0.7 + 1
    for method in ("sinkhorn-online", "sinkhorn-multiscale", "sinkhorn-geomloss"):
        cpu = transport_map(x, y, method, blur=0.05)
        gpu = transport_map(x.cuda(), y.cuda(), method, blur=0.05)
        assert gpu.device.type == "cuda" and relative(gpu.cpu() - x, cpu - x) < 1e-6, method
    cpu_f, cpu_g = sinkhorn_potentials(x, y, blur=0.05).debiased()
    gpu_f, gpu_g = sinkhorn_potentials(x.cuda(), y.cuda(), blur=0.05).debiased()
    assert torch.allclose(gpu_f.cpu(), cpu_f, atol=1e-8) and torch.allclose(gpu_g.cpu(), cpu_g, atol=1e-8)


@pytest.mark.cuda
def test_online_tiles_follow_the_gpu_free_memory_and_refuse_what_cannot_fit():
    from torchmf.transport import free_memory, tile_rows, transport_map

    free = free_memory("cuda")
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    rows = tile_rows(10 ** 6, 10 ** 6, 4, "cuda")
    assert rows * 10 ** 6 * 4 * 2 <= free / 4 + 8 * 10 ** 6  # within 1/4 of the free memory
    with pytest.raises(ValueError, match=r"^memory_budget: one row tile"):
        tile_rows(10, 10 ** 13, 4, "cuda")  # 80 TB for one row: a clear error, never an out-of-memory hang
    x = torch.randn(2000, 2, device="cuda")
    with pytest.raises(ValueError, match=r"^memory_budget"):
        transport_map(x, x + 1, "sinkhorn-online", memory_budget=1000)


@pytest.mark.cuda
def test_wsindy_coefficients_cpu_and_cuda_agree():
    from torchmf import wsindy

    data = systems.get("qanr_1d", diffusion="none").simulate(n_particles=2000, seed=0, progress=False,
                                                            dtype=torch.float64)
    cpu = wsindy.identify(data, "default")
    gpu = wsindy.identify(data.to("cuda"), "default")
    assert cpu.selected == gpu.selected
    assert torch.allclose(gpu.coefficients.cpu(), cpu.coefficients, rtol=1e-6, atol=1e-9)


def test_cuda_marker_is_registered_and_skips_without_a_device(request):
    """The cuda tests above are collected here and skipped with a reason when there is no GPU."""
    marked = [item for item in request.session.items if "cuda" in item.keywords and item.fspath == request.fspath]
    assert len(marked) >= 7
    if not torch.cuda.is_available():
        assert all(any(m.name == "skip" for m in item.iter_markers()) for item in marked)
