"""Errors of the helpers the house move gave their own names (issue 21): the class_path helper, the
trajectory file reader and the drift checkpoint reader each name the argument and what was wrong."""
import numpy as np
import pytest
import torch

from torchmf._class_path import import_subclass, split_class_path
from torchmf.averaging import fast_system
from torchmf.data.trajectory_files import read_trajectory_file
from torchmf.systems.fastslow import FastSlowSystem

BASE_PATH = "torchmf.systems.fastslow.FastSlowSystem"


def test_split_class_path_reads_the_yaml_form_and_refuses_other_keys():
    assert split_class_path({"class_path": "my.System", "init_args": {"a": 1}}, {"b": 2}) == ("my.System",
                                                                                             {"a": 1, "b": 2})
    with pytest.raises(ValueError, match=r"^model: expected a name or \{class_path"):
        split_class_path({"class_path": "my.System", "extra": 1}, argument="model")
    with pytest.raises(ValueError, match="system: expected a name or"):
        split_class_path({"init_args": {}})


def test_import_subclass_names_the_argument_and_the_problem():
    assert import_subclass("torchmf.systems.fastslow.FastSlowSystem", FastSlowSystem, "system", BASE_PATH) \
        is FastSlowSystem
    with pytest.raises(ValueError, match="system: cannot import 'no_such_module_xyz.Thing'.*PYTHONPATH"):
        import_subclass("no_such_module_xyz.Thing", FastSlowSystem, "system", BASE_PATH)
    with pytest.raises(ValueError, match="system: 'torchmf.grid.Grid' is not a subclass of " + BASE_PATH):
        import_subclass("torchmf.grid.Grid", FastSlowSystem, "system", BASE_PATH)


def test_fast_system_refuses_an_import_path_that_is_not_a_fast_slow_system():
    with pytest.raises(ValueError, match="is not a subclass of"):
        fast_system("torchmf.grid.Grid")
    with pytest.raises(ValueError, match="expected a fast-slow system"):
        fast_system("ou_linear")  # registered, but not fast-slow
    with pytest.raises(ValueError, match="expected a registered fast-slow system"):
        fast_system("no_such_system")


def test_read_trajectory_file_refuses_folders_foreign_and_incomplete_files(tmp_path):
    with pytest.raises(IsADirectoryError):
        read_trajectory_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_trajectory_file(tmp_path / "absent.h5")
    with pytest.raises(ValueError, match="expected a .h5, .hdf5 or .npz"):
        (tmp_path / "x.txt").write_text("1")
        read_trajectory_file(tmp_path / "x.txt")
    np.savez(tmp_path / "foreign.npz", header=np.array('{"format": "other", "version": 1}'), positions=np.zeros(3))
    with pytest.raises(ValueError, match="is not a torchmf trajectories file"):
        read_trajectory_file(tmp_path / "foreign.npz")
    np.savez(tmp_path / "broken.npz", header=np.array("not json"), positions=np.zeros(3))
    with pytest.raises(ValueError, match="corrupt header"):
        read_trajectory_file(tmp_path / "broken.npz")
    np.savez(tmp_path / "plain.npz", positions=np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="lacks 'positions' or 'times'"):
        read_trajectory_file(tmp_path / "plain.npz")
    np.savez(tmp_path / "ok.npz", positions=np.zeros((2, 3, 1)), times=np.arange(2.0))
    arrays, meta = read_trajectory_file(tmp_path / "ok.npz")
    assert meta == {"source": "ok.npz"} and arrays["positions"].shape == (2, 3, 1)


def test_drift_checkpoint_reader_refuses_other_payloads(tmp_path):
    from trainers.drift import DriftModel, drift_model_from_checkpoint

    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="neither a DriftModule payload"):
        drift_model_from_checkpoint(path)
    model = DriftModel(dim=2, hidden=8, interaction_hidden=8)
    torch.save({"config": model.config, "state_dict": model.state_dict()}, tmp_path / "drift.pt")
    loaded = drift_model_from_checkpoint(tmp_path / "drift.pt")
    x = torch.randn(1, 5, 2)
    assert torch.equal(loaded(x), model(x))
