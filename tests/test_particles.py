import numpy as np
import pytest
import torch

from torchmf import Trajectories


def make(m=2, l=5, n=7, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Trajectories(torch.randn(m, l, n, d, generator=g), torch.linspace(0, 1, l),
                        {"system": "test", "params": {"a": 1.0}}, {"velocity": torch.randn(m, l, n, d, generator=g)})


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".npz"])
def test_roundtrip(tmp_path, suffix):
    data = make()
    path = data.save(tmp_path / f"data{suffix}")
    again = Trajectories.load(path)
    assert torch.equal(again.positions, data.positions)
    assert torch.equal(again.times, data.times)
    assert torch.equal(again.extras["velocity"], data.extras["velocity"])
    assert again.meta == data.meta
    assert (again.n_experiments, again.n_times, again.n_particles, again.dim) == (2, 5, 7, 2)
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_three_dimensional_positions_are_one_experiment():
    data = Trajectories(torch.zeros(3, 4, 1), torch.arange(3.0))
    assert data.positions.shape == (1, 3, 4, 1)
    assert data.snapshot(2).shape == (1, 4, 1)


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "data.h5"
    make(seed=1).save(path)
    before = path.read_bytes()
    import torchmf.particles as particles

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(particles, "_write_hdf5", explode)
    with pytest.raises(RuntimeError):
        make(seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5"]


def test_hdf5_is_chunked_and_compressed(tmp_path):
    import h5py

    path = make().save(tmp_path / "d.h5")
    with h5py.File(path) as handle:
        assert handle["positions"].chunks == (1, 1, 7, 2)
        assert handle["positions"].compression == "gzip"


def test_to_changes_dtype():
    data = make().to(torch.float64)
    assert data.positions.dtype == torch.float64 and data.times.dtype == torch.float64


@pytest.mark.parametrize("positions, times, message", [
    (torch.zeros(2, 3), torch.arange(2.0), "positions"),
    (torch.zeros(1, 3, 4, 2, 1), torch.arange(3.0), "positions"),
    (torch.full((1, 3, 4, 2), float("nan")), torch.arange(3.0), "positions"),
    (torch.zeros(1, 3, 4, 2), torch.arange(4.0), "times"),
    (torch.zeros(1, 3, 4, 2), torch.tensor([0.0, 2.0, 1.0]), "times"),
    (torch.zeros(1, 3, 4, 2), torch.tensor([0.0, float("inf"), 1.0]), "times"),
    (torch.zeros(1, 3, 0, 2), torch.arange(3.0), "positions"),
])
def test_bad_inputs(positions, times, message):
    with pytest.raises(ValueError, match=message):
        Trajectories(positions, times)


def test_bad_types_and_files(tmp_path):
    with pytest.raises(TypeError, match="positions"):
        Trajectories(np.zeros((1, 2, 3, 1)), np.arange(2.0))
    with pytest.raises(TypeError, match="positions"):
        Trajectories(torch.zeros(1, 2, 3, 1, dtype=torch.int64), torch.arange(2.0))
    with pytest.raises(TypeError, match="meta"):
        Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0), {"bad": object()})
    with pytest.raises(ValueError, match="extras"):
        Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0), extras={"v": torch.zeros(1, 2, 4, 1)})
    with pytest.raises(ValueError, match="path"):
        make().save(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError, match="path"):
        Trajectories.load(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="path"):
        Trajectories.load(foreign)
    other = tmp_path / "other.npz"
    np.savez(other, positions=np.zeros((1, 2, 3, 1)))
    with pytest.raises(ValueError, match="not a torchmf"):
        Trajectories.load(other)
