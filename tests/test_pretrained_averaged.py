"""The shipped pretrained averaged model: loads verified, ready (eval, device), works without
training code; a truncated or foreign checkpoint is refused with a clear error."""
import json
import shutil

import pytest
import torch

from torchmf import pretrained
from torchmf.averaging import build_pretrained, drift_error, simulate_reduced

NAME = "averaged-cubic"

pytestmark = pytest.mark.skipif(NAME not in pretrained.names(), reason=f"{NAME} is not shipped")


def test_load_returns_a_ready_model_whose_drift_samples_and_sde_work():
    model = pretrained.load(NAME)
    assert not model.training and all(not m.training for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"
    assert drift_error(model, n_samples=2048) < 0.1  # against the closed-form averaged drift
    x = torch.tensor([[-0.5], [0.0], [0.5]])
    with torch.no_grad():
        y = model.sample_fast(x, 4000, torch.Generator().manual_seed(0))
        lower, median, upper = model.credible_band(x, n_parameter_samples=100, n_samples=256)
        paths = simulate_reduced(model, torch.zeros(8, 1), torch.linspace(0, 1, 5), dt=0.02, seed=0, n_samples=64)
    assert y.shape == (3, 4000, 1)
    assert (y.mean(1) - x).abs().max() < 0.1 and (y.var(1) - 0.5).abs().max() < 0.1  # rho_x = N(x, 1/2)
    assert (lower <= median).all() and (median <= upper).all()
    assert paths.positions.shape == (8, 5, 1, 1) and torch.isfinite(paths.positions).all()
    manifest = pretrained.info(NAME)
    assert manifest["builder"] == "torchmf.averaging:build_pretrained" and "drift_relative_l2" in manifest["metrics"]


def test_default_credible_band_covers_the_true_drift_and_is_as_smooth_as_it():
    """Issue 14: with E_q computed once precisely, the 90% band holds the true F over the visited range
    and its median is smooth (the earlier plain 512-sample band: 21% of the grid, a jagged median)."""
    from torchmf.variational import band_scores

    model = pretrained.load(NAME)
    scores = band_scores(model, n_points=100)
    assert scores["inside_fraction"] >= 0.8
    assert scores["median_roughness_ratio"] <= 5.0
    assert scores["median_relative_l2"] < 0.06


def test_corrected_sigma_interval_contains_the_true_slow_noise():
    model = pretrained.load(NAME)
    assert model.corrects_sigma  # the training path's occupation and step travel in the checkpoint
    with torch.no_grad():
        lower, upper = model.credible_intervals(0.9, n_parameter_samples=2000, generator=torch.Generator().manual_seed(0))
        raw_lower, raw_upper = model.credible_intervals(0.9, n_parameter_samples=2000, corrected_sigma=False,
                                                        generator=torch.Generator().manual_seed(0))
    sigma = model.system.sigma
    assert float(lower[-1].exp()) <= sigma <= float(upper[-1].exp())
    assert float(raw_lower[-1].exp()) > sigma  # the uncorrected Euler-Maruyama interval misses it


def _copy_registry(tmp_path, monkeypatch):
    for suffix in (".pt", ".json"):
        shutil.copy(pretrained.CHECKPOINT_DIR / f"{NAME}{suffix}", tmp_path / f"{NAME}{suffix}")
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", tmp_path)
    return tmp_path / f"{NAME}.pt"


def test_truncated_checkpoint_is_refused(tmp_path, monkeypatch):
    checkpoint = _copy_registry(tmp_path, monkeypatch)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="SHA-256"):
        pretrained.load(NAME)


def test_foreign_file_is_refused_even_with_a_matching_hash(tmp_path, monkeypatch):
    checkpoint = _copy_registry(tmp_path, monkeypatch)
    checkpoint.write_bytes(b"this is not a torch checkpoint" * 10)
    manifest = json.loads((tmp_path / f"{NAME}.json").read_text())
    manifest["sha256"] = pretrained.sha256(checkpoint)
    (tmp_path / f"{NAME}.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        pretrained.load(NAME)


def test_payload_of_another_model_is_refused():
    with pytest.raises(ValueError, match="payload"):
        build_pretrained({"class": "DriftModule", "config": {}, "state_dict": {}}, {})
    with pytest.raises(ValueError, match="payload"):
        build_pretrained({"weights": torch.zeros(3)}, {})
