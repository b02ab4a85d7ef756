"""trainers.drift: the neural drift, its Euler-Maruyama likelihood, the data module, the shipped checkpoint.

Bad inputs tried: neither path nor system (``path``), an empty window (``t_end``), a wrong
particle dimension (``x``), a bad payload (``payload``), a non-positive scale (``scale``).
"""
from __future__ import annotations

import pytest
import torch

from torchmf.grid import Grid
from trainers.drift import DriftModel, TrajectoryDataModule, build_drift_model, transition_nll


def test_interaction_is_the_radial_sum():
    torch.manual_seed(0)
    model = DriftModel(dim=2, interaction_length=2.0)
    x = torch.randn(1, 50, 2) * 3
    difference = x.unsqueeze(-2) - x.unsqueeze(-3)  # x_i - x_j
    r = difference.norm(dim=-1)
    phi = model.kernel.strength * model.radial((r / 2.0).unsqueeze(-1)).squeeze(-1) * torch.exp(-r / 2.0)
    expected = (phi.unsqueeze(-1) * difference).mean(-2)
    assert torch.allclose(model.interaction(x), expected, atol=1e-5)
    with torch.no_grad():
        gridded = DriftModel(dim=2, interaction_length=2.0)
        gridded.load_state_dict(model.state_dict())
        gridded.use_grid(Grid(-15, 15, 256, dim=2))
        assert float((gridded.interaction(x) - expected).norm() / expected.norm()) < 5e-2


@pytest.mark.slow
def test_likelihood_recovers_an_ornstein_uhlenbeck_drift():
    generator = torch.Generator().manual_seed(1)
    dt, sigma = 0.05, 0.5
    x = torch.randn(30, 16, 1, generator=generator) * 1.5
    x_next = x - x * dt + sigma * dt ** 0.5 * torch.randn(x.shape, generator=generator)
    torch.manual_seed(2)
    model = DriftModel(dim=1, center=[0.0], hidden=32, interaction_hidden=8, sigma=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    steps = torch.full((30,), dt)
    start = float(transition_nll(model, x, x_next, steps).detach())
    for _ in range(250):
        optimizer.zero_grad()
        loss = transition_nll(model, x, x_next, steps)
        loss.backward()
        optimizer.step()
    assert float(loss) < start
    assert abs(float(model.sigma) - sigma) < 0.06
    # the total drift (external + interaction: in 1-D the mean-field part can carry some of it) is -x
    with torch.no_grad():
        error = (model(x) + x).norm() / x.norm()
    assert float(error) < 0.35


def test_data_module_pairs_and_lightning_fit(tmp_path):
    from lightning.pytorch import Trainer

    from trainers.drift import DriftModule

    data = TrajectoryDataModule(system="swarm_ring", n_particles=60, t_end=0.2, record_dt=0.05, max_particles=50,
                                batch_size=2, val_fraction=0.25)
    x, x_next, dt = data.pairs()
    assert x.shape == (4, 50, 2) and x_next.shape == (4, 50, 2) and torch.allclose(dt, torch.full((4,), 0.05))
    module = DriftModule(center=[62.5, 62.5], scale=30.0, velocity_scale=25.0, interaction_length=5.0, sigma=5.0)
    trainer = Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    payload = module.payload()
    rebuilt = build_drift_model(payload)
    probe = torch.rand(1, 10, 2) * 100
    assert torch.allclose(rebuilt(probe), module.model(probe).detach(), atol=1e-5)


def test_pretrained_swarm_ring_drift_loads():
    from torchmf import pretrained

    assert "swarm-ring-drift" in pretrained.names()
    assert (pretrained.CHECKPOINT_DIR / "swarm-ring-drift.pt").stat().st_size < 1_000_000
    model = pretrained.load("swarm-ring-drift")
    assert isinstance(model, DriftModel) and float(model.sigma) > 0
    with torch.no_grad():
        drift = model(torch.full((1, 5, 2), 62.5) + torch.randn(1, 5, 2))
    assert drift.shape == (1, 5, 2) and bool(torch.isfinite(drift).all())


def test_bad_inputs():
    for build, name in [
        (lambda: TrajectoryDataModule(path=None, system=None), "path"),
        (lambda: TrajectoryDataModule(t_start=1.0, t_end=0.5), "t_end"),
        (lambda: DriftModel(dim=2)(torch.zeros(3, 3)), "x"),
        (lambda: build_drift_model({"weights": 1}), "payload"),
        (lambda: DriftModel(dim=2, scale=0.0), "scale"),
    ]:
        with pytest.raises((ValueError, TypeError), match=name):
            build()
