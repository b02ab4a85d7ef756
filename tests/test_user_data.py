"""Users' own data: arrays, long-format tracks with lost entries, plain files, images in numpy axis order.

Bad inputs tried (each raises naming the argument): a repeated (particle, frame) row (``table``),
a missing column (``table``), a frame with no observed particle (``mask``), a mask of the wrong
shape (``mask``), a plain file without ``times`` (``path``), a field-of-view mask of the wrong
shape (``field_of_view``), ``origin="upper"`` with ``indexing="ij"`` (``origin``), a mass fraction
above 1 (``normalize``), an image file without an image array (``key``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from torchmf import Trajectories, systems, wsindy
from torchmf.grid import Grid
from torchmf.metrics import w2
from torchmf.nudging import GridObservations, NudgedSDE
from torchmf.sde import McKeanVlasovSDE


# -- data in --------------------------------------------------------------------------------------------
def _write_tracks(path, positions, keep):
    """Long-format CSV ``particle,frame,x[,y]`` of ``positions (L, N, d)``, rows only where ``keep (L, N)``."""
    names = ["x", "y", "z"][:positions.shape[-1]]
    lines = ["particle,frame," + ",".join(names)]
    for frame in range(positions.shape[0]):
        for particle in np.flatnonzero(keep[frame]):
            lines.append(f"cell{particle},{frame}," + ",".join(repr(float(v)) for v in positions[frame, particle]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_from_arrays_reads_numpy_keeps_float64_times_and_masks_nan():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(6, 5, 2)).astype(np.float32)
    positions[2, 3] = np.nan
    times = 1e4 + 1e-3 * np.arange(6)  # float32 would round these to the same value
    data = Trajectories.from_arrays(positions, times)
    assert data.positions.shape == (1, 6, 5, 2) and data.positions.dtype == torch.float32
    assert data.times.dtype == torch.float64 and torch.equal(data.times, torch.from_numpy(times))
    assert data.mask.shape == (1, 6, 5) and int((~data.mask).sum()) == 1 and not bool(data.mask[0, 2, 3])
    assert data.counts().tolist() == [[5, 5, 4, 5, 5, 5]]
    weights = data.weights()
    assert torch.allclose(weights.sum(-1), torch.ones(1, 6)) and float(weights[0, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="needs complete tracks"):
        data.require_complete("this method")
    complete = Trajectories.from_arrays(np.nan_to_num(positions), times)
    assert complete.mask is None and complete.complete


def test_frames_with_different_counts_are_padded_and_masked():
    frames = [np.zeros((3, 2)), np.ones((5, 2)), np.full((4, 2), 2.0)]
    data = Trajectories.from_arrays(frames, [0.0, 1.0, 2.0])
    assert data.positions.shape == (1, 3, 5, 2) and data.counts().tolist() == [[3, 5, 4]]
    assert torch.allclose(data.weights()[0, 0, :3], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_csv_tracks_equal_the_arrays_they_were_written_from(tmp_path):
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(7, 12, 2))
    keep = rng.random((7, 12)) > 0.1
    keep[:, 0] = True
    path = _write_tracks(tmp_path / "tracks.csv", positions, keep)
    data = Trajectories.from_tracks(path, dt=0.5)
    order = np.argsort([f"cell{i}" for i in range(12)])  # identities are sorted as text
    expected = np.where(keep[..., None], positions, np.nan)[:, order]
    assert data.positions.shape == (1, 7, 12, 2)
    assert np.allclose(data.positions[0].numpy(), expected, equal_nan=True)
    assert torch.allclose(data.times, 0.5 * torch.arange(7, dtype=torch.float64))
    table = {"id": np.repeat(np.arange(12), 7), "t": np.tile(np.arange(7), 12),
             "x": positions[:, :, 0].T.reshape(-1), "y": positions[:, :, 1].T.reshape(-1)}
    from_dict = Trajectories.from_tracks(table, id="id", time="t")
    assert from_dict.mask is None and from_dict.positions.shape == (1, 7, 12, 2)
    with pytest.raises(ValueError, match="table"):
        Trajectories.from_tracks({"particle": [0, 0], "frame": [1, 1], "x": [0.0, 1.0]})
    with pytest.raises(ValueError, match="table"):
        Trajectories.from_tracks(table, id="cell", time="t")


def test_pandas_dataframe_tracks_equal_the_csv(tmp_path):
    pandas = pytest.importorskip("pandas", reason="pandas is optional")
    rng = np.random.default_rng(8)
    positions = rng.normal(size=(4, 9, 2))
    keep = rng.random((4, 9)) > 0.2
    keep[:, 0] = True
    path = _write_tracks(tmp_path / "tracks.csv", positions, keep)
    from_frame = Trajectories.from_tracks(pandas.read_csv(path))
    from_csv = Trajectories.from_tracks(path)
    assert torch.equal(from_frame.mask, from_csv.mask)
    assert torch.allclose(from_frame.filled_positions(), from_csv.filled_positions())


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_plain_files_and_masked_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(2)
    positions = rng.normal(size=(2, 4, 6, 1))
    positions[1, 2, 5] = np.nan
    times = np.linspace(0.0, 0.3, 4)
    path = tmp_path / f"plain{suffix}"
    if suffix == ".npz":
        np.savez(path, positions=positions, times=times)
    else:
        import h5py

        with h5py.File(path, "w") as handle:
            handle["positions"], handle["times"] = positions, times
    data = Trajectories.load(path)
    assert data.positions.shape == (2, 4, 6, 1) and int((~data.mask).sum()) == 1
    assert data.times.dtype == torch.float64
    again = Trajectories.load(data.save(tmp_path / f"again{suffix}"))
    assert torch.equal(again.mask, data.mask)
    assert torch.allclose(again.filled_positions(), data.filled_positions())
    np.savez(tmp_path / "bad.npz", positions=positions)
    with pytest.raises(ValueError, match="times"):
        Trajectories.load(tmp_path / "bad.npz")


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="mask"):
        Trajectories(torch.zeros(3, 4, 1), torch.arange(3.0), mask=torch.ones(3, 5, dtype=torch.bool))
    empty = torch.ones(3, 4, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match="mask"):
        Trajectories(torch.zeros(3, 4, 1), torch.arange(3.0), mask=empty)


def test_masked_histogram_equals_each_frames_own_histogram():
    rng = np.random.default_rng(3)
    positions = rng.uniform(-1, 1, size=(5, 40, 1))
    keep = rng.random((5, 40)) > 0.3
    data = Trajectories.from_arrays(np.where(keep[..., None], positions, np.nan), np.arange(5.0))
    grid = Grid(-1.2, 1.2, 25)
    from torchmf.wsindy.histogram import masked_positions

    filled, weights, observed = masked_positions(data)
    density = wsindy.histogram(filled, grid, weights=weights)
    for frame in range(5):
        own = wsindy.histogram(torch.from_numpy(positions[frame, keep[frame]]).reshape(1, 1, -1, 1), grid)
        assert torch.allclose(density[frame], own[0], atol=1e-12)
    assert observed.shape == (int(keep.sum()), 1)


@pytest.fixture(scope="module")
def qanr():
    return systems.get("qanr_1d", diffusion="none").simulate(n_particles=2000, seed=0, progress=False,
                                                            dtype=torch.float64)


def test_identify_on_csv_with_lost_entries_matches_complete_data(tmp_path, qanr, capsys):
    # acceptance: 5% lost entries recover the same terms as the complete data, coefficients within 5%
    import json

    from torchmf.cli import main

    positions = qanr.positions[0].numpy()
    rng = np.random.default_rng(4)
    keep = rng.random(positions.shape[:2]) > 0.05
    complete_path = _write_tracks(tmp_path / "complete.csv", positions, np.ones_like(keep))
    lost_path = _write_tracks(tmp_path / "lost.csv", positions, keep)
    models = {}
    for name, path in (("complete", complete_path), ("lost", lost_path)):
        assert main(["identify", str(path), "--frame-dt", str(float(qanr.times[1] - qanr.times[0])),
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        models[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "missing" in capsys.readouterr().out
    assert set(models["lost"]["selected"]) == set(models["complete"]["selected"])
    assert {"K:|x|^1", "K:|x|^2"} <= set(models["complete"]["selected"])  # the true terms of the QANR data
    complete = np.array(models["complete"]["coefficients"])
    lost = np.array(models["lost"]["coefficients"])
    assert np.linalg.norm(lost - complete) < 0.05 * np.linalg.norm(complete)
    large = np.abs(complete) > 0.01 * np.abs(complete).max()  # terms at noise level carry no relative meaning
    assert (np.abs(lost - complete)[large] < 0.05 * np.abs(complete)[large]).all()
    # baseline: keeping only the complete tracks (the workaround without masks) leaves too few particles
    complete_tracks = keep.all(0)
    assert complete_tracks.sum() < 0.05 * keep.shape[1]


# -- images ---------------------------------------------------------------------------------------------
def _images(points, centres, bandwidth):
    """Smoothed density images ``(L, rows = y, columns = x)`` of ``points (L, N, 2)`` in plain numpy."""
    gx = np.exp(-(centres[None, None, :] - points[..., 0:1]) ** 2 / (2 * bandwidth ** 2))
    gy = np.exp(-(centres[None, None, :] - points[..., 1:2]) ** 2 / (2 * bandwidth ** 2))
    return np.einsum("lny,lnx->lyx", gy, gx) / (points.shape[1] * 2 * np.pi * bandwidth ** 2)


@pytest.fixture(scope="module")
def image_case():
    rng = np.random.default_rng(0)
    target, dt = np.array([1.2, -0.6]), 0.01
    x = rng.normal(size=(600, 2)) * 0.5
    frames = [x]
    for step in range(100):
        x = x - (x - target) * dt + 0.5 * np.sqrt(dt) * rng.normal(size=x.shape)
        if (step + 1) % 10 == 0:
            frames.append(x)
    reference = np.stack(frames)
    edges = np.linspace(-3, 3, 65)
    images = _images(reference, 0.5 * (edges[1:] + edges[:-1]), 0.3)
    return reference, images, np.linspace(0.0, 1.0, 11)


def _forecast(observations, reference, times, strength=20.0):
    base = McKeanVlasovSDE(2, external_force=lambda z: -z, diffusion=0.5)  # biased: relaxes to 0, not (1.2, -0.6)
    run = NudgedSDE(base, observations, 0.3, strength).simulate(torch.from_numpy(reference[0]).unsqueeze(0), times,
                                                                0.01, seed=3, progress=False)
    return float(w2(run.positions[0, -1], torch.from_numpy(reference[-1])))


def test_images_in_numpy_axis_order_give_the_transposed_forecast(image_case):
    reference, images, times = image_case
    extent = ((-3.0, -3.0), (3.0, 3.0))
    default = _forecast(GridObservations(images, extent, times), reference, times)
    transposed = _forecast(GridObservations(np.ascontiguousarray(images.transpose(0, 2, 1)), extent, times,
                                            indexing="ij"), reference, times)
    wrong_axes = _forecast(GridObservations(images, extent, times, indexing="ij"), reference, times)
    unnudged = _forecast(GridObservations(images, extent, times), reference, times, strength=0.0)
    assert abs(default - transposed) <= 0.05 * transposed
    assert default < 0.6 * unnudged  # the nudging helps ...
    assert wrong_axes > 1.5 * default  # ... and the old (x, y) reading of a numpy image does not
    flipped = GridObservations(images[:, ::-1], extent, times, origin="upper")
    assert torch.equal(flipped.densities, GridObservations(images, extent, times).densities)


def test_extent_is_the_image_edges_and_mass_far_from_one_warns(image_case):
    _, images, times = image_case
    observations = GridObservations(images, ((-3.0, -3.0), (3.0, 3.0)), times)
    assert observations.grid.lower == (-3 + 3 / 64, -3 + 3 / 64) and observations.grid.spacing[0] == 6 / 64
    assert torch.allclose(observations.masses(), torch.ones(1, 11, dtype=torch.float64), atol=1e-3)
    with pytest.warns(UserWarning, match="far from 1"):
        GridObservations(images * 255, ((-3.0, -3.0), (3.0, 3.0)), times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = GridObservations(images * 255, ((-3.0, -3.0), (3.0, 3.0)), times, normalize=True)
    assert torch.allclose(scaled.masses(), torch.ones(1, 11, dtype=torch.float64))
    half = GridObservations(images * 255, ((-3.0, -3.0), (3.0, 3.0)), times, normalize=0.5, field_of_view=True)
    assert torch.allclose(half.masses(), torch.full((1, 11), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="normalize"):
        GridObservations(images, ((-3.0, -3.0), (3.0, 3.0)), times, normalize=2.0)
    with pytest.raises(ValueError, match="origin"):
        GridObservations(images, ((-3.0, -3.0), (3.0, 3.0)), times, indexing="ij", origin="upper")
    with pytest.raises(ValueError, match="field_of_view"):
        GridObservations(images, ((-3.0, -3.0), (3.0, 3.0)), times, field_of_view=np.ones((3, 3), bool))


def test_field_of_view_ignores_particles_outside_and_matches_the_full_window_inside(image_case):
    reference, images, times = image_case
    extent = ((-3.0, -3.0), (3.0, 3.0))
    base = McKeanVlasovSDE(2)
    x = torch.from_numpy(reference[0]).unsqueeze(0)
    plain = NudgedSDE(base, GridObservations(images, extent, times), 0.3, 5.0).velocity(0.5, x)
    windowed = NudgedSDE(base, GridObservations(images, extent, times, field_of_view=True), 0.3, 5.0)
    # with every particle inside, the windowed misfit is the usual one (K_h * K_h = K_sqrt2h on the grid)
    assert float((windowed.velocity(0.5, x) - plain).norm() / plain.norm()) < 1e-3
    # particles far outside the window: no error, no nudging
    far = torch.cat([x, torch.tensor([[[9.0, 0.0], [-20.0, 40.0]]], dtype=torch.float64)], 1)
    velocity = windowed.velocity(0.5, far)
    assert torch.equal(velocity[0, -2:], torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="grid"):
        NudgedSDE(base, GridObservations(images, extent, times), 0.3, 5.0).velocity(0.5, far)
    # a half window: the forecast still improves on the unnudged run, with cells leaving the window
    right = np.zeros(images.shape[1:], bool)
    right[:, 32:] = True  # columns = x >= 0
    windowed = GridObservations(images, extent, times, field_of_view=right)
    assert _forecast(windowed, reference, times) < 0.8 * _forecast(windowed, reference, times, strength=0.0)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".tif"])
def test_image_readers(tmp_path, image_case, suffix):
    _, images, times = image_case
    path = tmp_path / f"images{suffix}"
    if suffix == ".npz":
        np.savez(path, images=images, times=times, extent=np.array([[-3.0, -3.0], [3.0, 3.0]]))
    elif suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as handle:
            handle["images"], handle["times"] = images, times
            handle["extent"] = np.array([[-3.0, -3.0], [3.0, 3.0]])
    else:
        tifffile = pytest.importorskip("tifffile", reason="TIFF stacks need the optional tifffile package")
        tifffile.imwrite(path, images.astype(np.float32))
    options = {} if suffix != ".tif" else {"extent": ((-3.0, -3.0), (3.0, 3.0)), "times": times}
    observations = GridObservations.from_file(path, **options)
    direct = GridObservations(images, ((-3.0, -3.0), (3.0, 3.0)), times)
    assert torch.allclose(observations.densities, direct.densities, rtol=1e-6)
    np.savez(tmp_path / "other.npz", frames=images)
    with pytest.raises(ValueError, match="key"):
        GridObservations.from_file(tmp_path / "other.npz", extent=((-3.0, -3.0), (3.0, 3.0)), times=times)


# -- speed where users wait ------------------------------------------------------------------------------
def test_wsindy_simulate_defaults_to_the_grid_backend_and_matches_the_exact_one():
    # the model of scripts/bench_wsindy_simulate.py (log attraction, confinement, diffusion) at N = 300
    import math

    library = wsindy.load_library("keller_segel_2d", 2)
    coefficients = torch.zeros(len(library), dtype=torch.float64)
    for name, value in {"K:[log|x|]_0.01": 1 / (2 * math.pi), "V:x1^2*x2^0": 0.25, "V:x1^0*x2^2": 0.25,
                        "D11:cos(0x1)*cos(0x2)": 0.05, "D22:cos(0x1)*cos(0x2)": 0.05}.items():
        coefficients[library.names.index(name)] = value
    model = wsindy.WSINDyModel(library, coefficients)
    x0 = torch.randn(1, 300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.arange(11, dtype=torch.float64) * 0.05
    default = model.simulate(x0, times, 0.05, seed=1, progress=False)
    exact = model.simulate(x0, times, 0.05, seed=1, progress=False, backend="dense")
    coefficients[library.names.index("K:[log|x|]_0.01")] = 0.0
    without = wsindy.WSINDyModel(library, coefficients).simulate(x0, times, 0.05, seed=1, progress=False)
    error = float(w2(default.positions[0, -1], exact.positions[0, -1]))
    assert error < 0.1 * float(w2(without.positions[0, -1], exact.positions[0, -1]))


# -- nudging with lost particles, LOT extrapolation, the CLI on user files --------------------------------
def test_masked_particle_observations_observe_only_the_observed_particles():
    from torchmf.nudging import ParticleObservations

    rng = np.random.default_rng(5)
    frame = rng.normal(size=(10, 2))
    lost = np.array([1, 4, 7])
    with_nan = frame.copy()
    with_nan[lost] = np.nan
    masked = ParticleObservations(Trajectories.from_arrays(with_nan[None], [0.0]))
    kept = ParticleObservations(torch.from_numpy(np.delete(frame, lost, 0))[None], times=[0.0])
    x = torch.from_numpy(rng.normal(size=(1, 30, 2)))
    for backend in ("pairwise", "grid"):
        grid = None if backend == "pairwise" else Grid(-8, 8, 128, dim=2)
        velocities = [NudgedSDE(McKeanVlasovSDE(2), observations, 0.5, 1.0, backend=backend, grid=grid).velocity(0.0, x)
                      for observations in (masked, kept)]
        assert torch.allclose(velocities[0], velocities[1], atol=1e-12)


def test_lot_extrapolate_matches_the_closed_form_euler_step_of_an_affine_flow():
    # x(t) = a(t) y + u t with a(t) = exp(-0.3 t), shuffled every frame (no tracking): the exact maps are affine,
    # so the LOT velocity and the extrapolated cloud have closed forms
    from torchmf.lot import extrapolate

    generator = torch.Generator().manual_seed(0)
    y = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    u, dt, horizon = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.05, 1.0
    scale = lambda t: math.exp(-0.3 * t)  # noqa: E731
    frames = torch.stack([(scale(i * dt) * y + u * i * dt)[torch.randperm(300, generator=generator)] for i in range(9)])
    data = Trajectories(frames, torch.arange(9, dtype=torch.float64) * dt)
    prediction = extrapolate(data, horizon=horizon, k=2, method="exact")
    centre, lag = 6 * dt, 2 * dt + horizon  # window = frames 4..8, centre frame 6
    # the default (regression) velocity: least-squares slope of the odd parts over the lags s_j = j dt; an affine
    # field is left unchanged by its smoothing
    speed = sum(j * dt * (scale(centre + j * dt) - scale(centre - j * dt)) / 2 for j in (1, 2)) \
        / sum((j * dt) ** 2 for j in (1, 2))
    expected = (scale(centre) + lag * speed) * y + u * (centre + lag)
    assert float(w2(prediction, expected)) < 1e-6  # w2 of equal clouds is ~1e-8 (square root of rounding)
    truth = scale(8 * dt + horizon) * y + u * (8 * dt + horizon)
    second = extrapolate(data, horizon=[horizon], k=2, method="exact", order=2)[0]
    assert float(w2(second, truth)) < 0.3 * float(w2(prediction, truth))
    assert float(w2(prediction, truth)) < 0.1 * float(w2(frames[-1], truth))  # standing still fails
    lost = frames.numpy().copy()
    lost[3, 5] = np.nan  # a lost particle before the window (frames 4..8): the same forecast
    assert torch.equal(extrapolate(Trajectories.from_arrays(lost, data.times), horizon=horizon, k=2, method="exact"),
                       prediction)
    lost[6, 5] = np.nan  # ... and in the central frame: that particle is not forecast (masked LOT, issue 15)
    assert extrapolate(Trajectories.from_arrays(lost, data.times), horizon=horizon, k=2, method="exact").shape == (299, 2)


def test_density_observations_of_masked_tracks_are_those_of_the_observed_particles():
    from torchmf.nudging import density_observations

    rng = np.random.default_rng(6)
    frames = [rng.normal(size=(40, 2)), rng.normal(size=(25, 2))]
    masked = Trajectories.from_arrays(frames, [0.0, 1.0])
    grid = Grid(-5, 5, 64, dim=2)
    images = density_observations(masked, grid, 0.4).densities[0]
    from torchmf.metrics import smoothed_density

    for index, frame in enumerate(frames):
        assert torch.allclose(images[index], smoothed_density(torch.from_numpy(frame), grid, 0.4), atol=1e-12)


def test_cli_nudge_on_tracks_and_its_bad_inputs(tmp_path, capsys):
    from torchmf.cli import main

    rng = np.random.default_rng(7)
    positions = np.cumsum(rng.normal(scale=0.1, size=(6, 200, 2)), 0)
    keep = rng.random((6, 200)) > 0.05
    tracks = _write_tracks(tmp_path / "cells.csv", positions, keep)
    library = wsindy.load_library("keller_segel_2d", 2)
    coefficients = torch.zeros(len(library), dtype=torch.float64)
    for name in ("D11:cos(0x1)*cos(0x2)", "D22:cos(0x1)*cos(0x2)"):
        coefficients[library.names.index(name)] = 0.005
    wsindy.WSINDyModel(library, coefficients).save(tmp_path / "diffusion.json")
    arguments = ["nudge", "--observations", str(tracks), "--frame-dt", "1", "--model", str(tmp_path / "diffusion.json"),
                 "--strength", "5", "--bandwidth", "0.3", "--particles", "100", "--dt", "0.5",
                 "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(arguments) == 0
    import json

    misfit = json.loads((tmp_path / "out" / "nudge.json").read_text())["misfit"]
    assert misfit["lambda=5"][-1] < misfit["un-nudged"][-1]
    capsys.readouterr()
    assert main(["nudge", "--observations", str(tracks), "--no-progress"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["lot", "--snapshots", str(tracks), "--frame-dt", "1"]) == 2
