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
    import torchmf.data.trajectory_files as particles

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
