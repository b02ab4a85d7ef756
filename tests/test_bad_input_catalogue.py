"""Catalogue of bad inputs (issue 13): every one ends in one line naming the argument or file.

CLI cases run ``torchmf`` in-process (``torchmf.cli.main(argv)``) inside an empty working folder
and assert exit status 2, exactly one stderr line ``torchmf CMD: error: ...`` containing the
expected fragment (the option, argument or file), no traceback and no file left behind.
API cases assert ``ValueError``/``TypeError`` with the argument's name in the message. Crafted
files (truncated archives, HDF5 links to other files, pickles) are refused without running or
reading anything outside them. The URL checkpoint case serves a pickle from a local
``http.server`` and asserts nothing was fetched and nothing ran.
"""
from __future__ import annotations

import http.server
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchmf import Trajectories, pretrained, systems
from torchmf.data.files import atomic_path, read_hdf5_array, read_plain_arrays, sweep_stale_temporaries
from torchmf._memory import check_fits
from torchmf._validation import check_seed, parse_key_values
from torchmf.cli import main as torchmf_main
from torchmf.grid import Grid
from torchmf.interaction import InteractionForce
from torchmf.kernels import GaussianKernel
from torchmf.nudging import NudgedSDE, ParticleObservations
from torchmf.sde import DivergenceGuard, McKeanVlasovSDE, make_generator, simulate

h5py = pytest.importorskip("h5py")
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------------------------------
# crafted input files (made once per module)
# ---------------------------------------------------------------------------------------------------
def _npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _header(meta=None):
    return np.array(json.dumps({"format": "torchmf.trajectories", "version": 1, "meta": meta or {}}))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    good = Trajectories(torch.randn(1, 3, 50, 1), torch.tensor([0.0, 0.1, 0.2]), {"system": "test"})
    good.save(root / "good.h5")
    good.save(root / "good.npz")
    (root / "afile").write_text("not a folder")
    (root / "folder.h5").mkdir()
    (root / "bad.yaml").write_text("system: [ou_linear\n")
    (root / "tag.yaml").write_text("system: !!python/object/apply:os.system ['touch pwned']\n")
    (root / "list.yaml").write_text("- system\n- ou_linear\n")
    (root / "unknown_key.yaml").write_text("system: ou_linear\nbogus: 1\n")
    (root / "dtype16.yaml").write_text("system: ou_linear\ndtype: float16\n")
    (root / "params_list.yaml").write_text("system: ou_linear\nparams: [1, 2]\n")
    (root / "library_bad.yaml").write_text("interaction: [{type: power\n")
    (root / "library_tag.yaml").write_text("interaction: !!python/name:os.system\n")
    data = (root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(data[: len(data) // 2])
    (root / "random.npz").write_bytes(os.urandom(256))
    (root / "empty.npz").write_bytes(b"")
    (root / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(100))
    (root / "text.h5").write_text("hello")
    (root / "data.csv.h5").write_bytes(b"")
    (root / "wrong.suffix").write_text("x")
    _npz(root / "header_list.npz", header=np.array("[1, 2]"), positions=np.zeros((1, 2, 3, 1)), times=np.arange(2.0))
    _npz(root / "header_bad.npz", header=np.array("{not json"), positions=np.zeros((1, 2, 3, 1)),
         times=np.arange(2.0))
    _npz(root / "header_version.npz", header=np.array(json.dumps({"format": "torchmf.trajectories", "version": "x"})),
         positions=np.zeros((1, 2, 3, 1)), times=np.arange(2.0))
    _npz(root / "newer.npz", header=np.array(json.dumps({"format": "torchmf.trajectories", "version": 99})),
         positions=np.zeros((1, 2, 3, 1)), times=np.arange(2.0))
    _npz(root / "foreign.npz", header=np.array(json.dumps({"format": "other"})), positions=np.zeros((1, 2, 3, 1)),
         times=np.arange(2.0))
    _npz(root / "strings.npz", header=_header(), positions=np.array([["a", "b"]]), times=np.arange(2.0))
    _npz(root / "nan_times.npz", header=_header(), positions=np.zeros((1, 2, 3, 1)), times=np.array([0.0, NAN]))
    _npz(root / "decreasing.npz", header=_header(), positions=np.zeros((1, 3, 3, 1)), times=np.array([0.0, 2.0, 1.0]))
    _npz(root / "mismatch.npz", header=_header(), positions=np.zeros((1, 3, 3, 1)), times=np.arange(2.0))
    _npz(root / "rank5.npz", header=_header(), positions=np.zeros((1, 2, 3, 1, 1)), times=np.arange(2.0))
    _npz(root / "no_times.npz", header=_header(), positions=np.zeros((1, 2, 3, 1)))
    with open(root / "pickled.npz", "wb") as handle:  # an object array: np.load must refuse the pickle
        np.savez(handle, header=_header(), positions=np.array([{"a": 1}], dtype=object), times=np.arange(2.0))
    _hdf5_files(root)
    return root


def _hdf5_files(root: Path) -> None:
    header = json.dumps({"format": "torchmf.trajectories", "version": 1, "meta": {}})
    with h5py.File(root / "other.h5", "w") as handle:  # the file the links point to
        handle["positions"] = np.full((1, 2, 3, 1), 7.0)
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "external_link.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["positions"] = h5py.ExternalLink(str(root / "other.h5"), "/positions")
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "soft_link.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["real"] = np.zeros((1, 2, 3, 1))
        handle["positions"] = h5py.SoftLink("/real")
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "external_extras.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["positions"] = np.zeros((1, 2, 3, 1))
        handle["times"] = np.arange(2.0)
        handle["extras"] = h5py.ExternalLink(str(root / "other.h5"), "/")
    raw = root / "raw.bin"
    raw.write_bytes(np.zeros(6).tobytes())
    with h5py.File(root / "external_storage.h5", "w") as handle:
        handle.attrs["header"] = header
        handle.create_dataset("positions", shape=(1, 2, 3, 1), dtype="f8", external=[(str(raw), 0, 48)])
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "virtual.h5", "w") as handle:
        handle.attrs["header"] = header
        layout = h5py.VirtualLayout(shape=(1, 2, 3, 1), dtype="f8")
        layout[...] = h5py.VirtualSource(str(root / "other.h5"), "positions", shape=(1, 2, 3, 1))
        handle.create_virtual_dataset("positions", layout)
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "header_int.h5", "w") as handle:
        handle.attrs["header"] = 5
        handle["positions"] = np.zeros((1, 2, 3, 1))
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "string_positions.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["positions"] = np.array([b"a", b"b"])
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "group_positions.h5", "w") as handle:
        handle.attrs["header"] = header
        handle.create_group("positions")
        handle["times"] = np.arange(2.0)
    with h5py.File(root / "no_positions.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["times"] = np.arange(2.0)


# ---------------------------------------------------------------------------------------------------
# CLI cases: (id, argv with {F} = the crafted-files folder, fragment the one-line message contains)
# ---------------------------------------------------------------------------------------------------
SIM = ["simulate", "ou_linear", "-o", "out.h5", "--no-progress", "--particles", "20", "--t-end", "0.1"]
NUDGE = ["nudge", "ou_linear", "--no-progress", "--particles", "20", "--t-end", "0.1", "--out", "nudge_out"]
LOT = ["lot", "box_diffusion", "--no-progress", "--particles", "20", "--out", "lot_out"]
IDENTIFY = ["identify", "{F}/good.h5"]

CLI_CASES = [
    # usage errors (argparse): one line, the argument named
    ("no command", [], "COMMAND"),
    ("unknown command", ["bogus"], "COMMAND"),
    ("simulate without system", ["simulate"], "system"),
    ("simulate non-integer particles", SIM + ["--particles", "1e3"], "--particles"),
    ("simulate text particles", SIM + ["--particles", "many"], "--particles"),
    ("simulate text dt", SIM + ["--dt", "small"], "--dt"),
    ("simulate float16 dtype", SIM + ["--dtype", "float16"], "--dtype"),
    ("simulate unknown option", SIM + ["--bogus", "1"], "--bogus"),
    ("nudge bad interpolation", NUDGE + ["--interpolation", "cubic"], "--interpolation"),
    ("nudge bad backend", NUDGE + ["--backend", "keops"], "--backend"),
    ("nudge bad scheme", NUDGE + ["--scheme", "rk4"], "--scheme"),
    ("nudge implicit pairwise", NUDGE + ["--scheme", "implicit", "--backend", "pairwise"], "--scheme"),
    ("nudge text strength", NUDGE + ["--strength", "strong"], "--strength"),
    ("nudge float obs-every", NUDGE + ["--obs-every", "1.5"], "--obs-every"),
    ("lot bad reinit", LOT + ["--reinit", "never"], "--reinit"),
    ("lot text k", LOT + ["--k", "x"], "--k"),
    ("identify without data", ["identify"], "data"),
    ("identify text grid-shape", IDENTIFY + ["--grid-shape", "big"], "--grid-shape"),
    ("report text only missing", ["report", "--only"], "--only"),
    # simulate: systems, recipes and parameters
    ("unknown system", ["simulate", "no_such_system", "-o", "x.h5"], "system"),
    ("missing recipe", ["simulate", "{F}/missing.yaml", "-o", "x.h5"], "missing.yaml"),
    ("recipe YAML syntax", ["simulate", "{F}/bad.yaml", "-o", "x.h5"], "bad.yaml"),
    ("recipe python tag", ["simulate", "{F}/tag.yaml", "-o", "x.h5"], "tag.yaml"),
    ("recipe is a list", ["simulate", "{F}/list.yaml", "-o", "x.h5"], "list.yaml"),
    ("recipe unknown key", ["simulate", "{F}/unknown_key.yaml", "-o", "x.h5"], "bogus"),
    ("recipe float16", ["simulate", "{F}/dtype16.yaml", "-o", "x.h5"], "float16"),
    ("recipe params list", ["simulate", "{F}/params_list.yaml", "-o", "x.h5"], "params"),
    ("param without =", SIM + ["--param", "a"], "--param"),
    ("param empty key", SIM + ["--param", "=1"], "--param"),
    ("param YAML syntax", SIM + ["--param", "a=[1"], "--param"),
    ("param python tag", SIM + ["--param", "a=!!python/object/apply:os.system ['true']"], "--param"),
    ("param python name", SIM + ["--param", "a=!!python/name:os.system"], "--param"),
    ("param unknown name", SIM + ["--param", "zz=1"], "zz"),
    ("param a NaN", SIM + ["--param", "a=.nan"], "a"),
    ("param a inf", SIM + ["--param", "a=.inf"], "a"),
    ("param a text", SIM + ["--param", "a=fast"], "a"),
    ("param a list", SIM + ["--param", "a=[1, 2]"], "a"),
    ("param sigma negative", SIM + ["--param", "sigma=-1"], "sigma"),
    ("double_well param text", ["simulate", "double_well", "-o", "x.h5", "--param", "a=x"], "a"),
    # simulate: sizes and steps
    ("particles zero", SIM + ["--particles", "0"], "n_particles"),
    ("particles negative", SIM + ["--particles", "-5"], "n_particles"),
    ("particles 1e10", SIM + ["--particles", "10000000000"], "n_particles"),
    ("particles 2^40 x experiments", SIM + ["--particles", "1099511627776", "--experiments", "4"], "n_particles"),
    ("experiments zero", SIM + ["--experiments", "0"], "n_experiments"),
    ("experiments negative", SIM + ["--experiments", "-1"], "n_experiments"),
    ("experiments huge", SIM + ["--experiments", "100000000000"], "n_particles"),
    ("t-end zero", SIM + ["--t-end", "0"], "t_end"),
    ("t-end negative", SIM + ["--t-end", "-1"], "t_end"),
    ("t-end NaN", SIM + ["--t-end", "nan"], "t_end"),
    ("t-end inf", SIM + ["--t-end", "inf"], "t_end"),
    ("dt zero", SIM + ["--dt", "0"], "dt"),
    ("dt negative", SIM + ["--dt", "-0.1"], "dt"),
    ("dt NaN", SIM + ["--dt", "nan"], "dt"),
    ("dt inf", SIM + ["--dt", "inf"], "dt"),
    ("record-dt zero", SIM + ["--record-dt", "0"], "record_dt"),
    ("record-dt negative", SIM + ["--record-dt", "-1"], "record_dt"),
    ("record-dt NaN", SIM + ["--record-dt", "nan"], "record_dt"),
    ("record-dt inf", SIM + ["--record-dt", "inf"], "record_dt"),
    ("record-dt tiny", SIM + ["--t-end", "1e9", "--record-dt", "1e-9"], "record_dt"),
    ("seed negative", SIM + ["--seed", "-1"], "seed"),
    ("seed beyond 64 bits", SIM + ["--seed", str(2 ** 70)], "seed"),
    ("seed 2^63", SIM + ["--seed", str(2 ** 63)], "seed"),
    ("device nonsense", SIM + ["--device", "toaster"], "device"),
    ("device cuda:99", SIM + ["--device", "cuda:99"], "device"),
    ("double_well dt 5 diverges", ["simulate", "double_well", "-o", "dw.h5", "--dt", "5", "--record-dt", "5",
                                   "--t-end", "20", "--no-progress"], "dt"),
    ("ou_linear dt 3 diverges", ["simulate", "ou_linear", "-o", "ou.h5", "--dt", "3", "--record-dt", "3",
                                 "--t-end", "300", "--particles", "20", "--no-progress"], "dt"),
    # simulate: outputs
    ("output suffix csv", SIM[:2] + ["-o", "out.csv", "--particles", "20", "--t-end", "0.1"], "out.csv"),
    ("output without suffix", SIM[:2] + ["-o", "out", "--particles", "20", "--t-end", "0.1"], "out"),
    ("output parent is a file", SIM[:2] + ["-o", "{F}/afile/x.h5", "--particles", "20", "--t-end", "0.1",
                                           "--no-progress"], "afile"),
    ("output is a folder", SIM[:2] + ["-o", "{F}/folder.h5", "--particles", "20", "--t-end", "0.1",
                                      "--no-progress"], "folder.h5"),
    # nudge
    ("nudge dt zero", NUDGE + ["--dt", "0"], "--dt"),
    ("nudge dt negative", NUDGE + ["--dt", "-0.01"], "--dt"),
    ("nudge dt NaN", NUDGE + ["--dt", "nan"], "--dt"),
    ("nudge t-end zero", NUDGE + ["--t-end", "0"], "--t-end"),
    ("nudge t-end inf", NUDGE + ["--t-end", "inf"], "--t-end"),
    ("nudge particles zero", NUDGE + ["--particles", "0"], "--particles"),
    ("nudge particles 1e10", NUDGE + ["--particles", "10000000000"], "--particles"),
    ("nudge strength negative", NUDGE + ["--strength", "-1"], "--strength"),
    ("nudge strength NaN", NUDGE + ["--strength", "nan"], "--strength"),
    ("nudge strength inf", NUDGE + ["--strength", "inf"], "--strength"),
    ("nudge bandwidth zero", NUDGE + ["--bandwidth", "0"], "--bandwidth"),
    ("nudge bandwidth negative", NUDGE + ["--bandwidth", "-0.2"], "--bandwidth"),
    ("nudge bandwidth NaN", NUDGE + ["--bandwidth", "nan"], "--bandwidth"),
    ("nudge obs-every zero", NUDGE + ["--obs-every", "0"], "--obs-every"),
    ("nudge obs-every negative", NUDGE + ["--obs-every", "-2"], "--obs-every"),
    ("nudge noise negative", NUDGE + ["--noise", "-0.1"], "--noise"),
    ("nudge noise NaN", NUDGE + ["--noise", "nan"], "--noise"),
    ("nudge seed negative", NUDGE + ["--seed", "-3"], "--seed"),
    ("nudge output suffix", NUDGE + ["-o", "nudged.csv"], "--output"),
    ("nudge param YAML", NUDGE + ["--param", "a=[1"], "--param"),
    ("nudge param tag", NUDGE + ["--param", "a=!!python/name:os.system"], "--param"),
    ("nudge param without =", NUDGE + ["--param", "a"], "--param"),
    ("nudge reference-param YAML", NUDGE + ["--reference-param", "a={"], "--reference-param"),
    ("nudge reference-param without =", NUDGE + ["--reference-param", "a"], "--reference-param"),
    ("nudge unknown param", NUDGE + ["--param", "zz=1"], "zz"),
    ("nudge unknown system", ["nudge", "no_such_system", "--out", "n"], "system"),
    ("nudge device nonsense", NUDGE + ["--device", "toaster"], "device"),
    ("nudge particles not integer", NUDGE + ["--particles", "2.5"], "--particles"),
    # lot
    ("lot threads zero", LOT + ["--threads", "0"], "--threads"),
    ("lot threads negative", LOT + ["--threads", "-2"], "--threads"),
    ("lot particles zero", LOT + ["--particles", "0"], "--particles"),
    ("lot particles negative", LOT + ["--particles", "-10"], "--particles"),
    ("lot particles 1e10", LOT + ["--particles", "10000000000"], "--particles"),
    ("lot k zero", LOT + ["--k", "0"], "k"),
    ("lot k negative", LOT + ["--k", "-1"], "k"),
    ("lot step zero", LOT + ["--step", "0"], "--step"),  # named as typed (was "H:", the integrator's name)
    ("lot step negative", LOT + ["--step", "-5"], "--step"),
    ("lot step NaN", LOT + ["--step", "nan"], "--step"),
    ("lot burn-in negative", LOT + ["--burn-in", "-1"], "--burn-in"),
    ("lot start-up negative", LOT + ["--start-up", "-1"], "--start-up"),
    ("lot n-steps negative", LOT + ["--n-steps", "-1"], "n_steps"),
    ("lot recovery negative", LOT + ["--recovery", "-1"], "recovery"),
    ("lot recovery NaN", LOT + ["--recovery", "nan"], "recovery"),
    ("lot unknown method", LOT + ["--method", "magic"], "method"),
    ("lot blur zero", LOT + ["--blur", "0"], "blur"),
    ("lot blur negative", LOT + ["--blur", "-1"], "blur"),
    ("lot adaptive tolerance negative", LOT + ["--adaptive-tolerance", "-1", "--t-end", "100"], "tolerance"),
    ("lot param YAML", LOT + ["--param", "a=[1"], "--param"),
    ("lot param without =", LOT + ["--param", "a"], "--param"),
    ("lot param tag", LOT + ["--param", "a=!!python/object:os.system"], "--param"),
    ("lot unknown param", LOT + ["--param", "zz=1"], "zz"),
    ("lot unknown system", ["lot", "no_such_system", "--out", "l"], "system"),
    ("lot seed negative", LOT + ["--seed", "-1"], "seed"),
    # identify: files
    ("identify missing file", ["identify", "{F}/missing.h5"], "missing.h5"),
    ("identify folder", ["identify", "{F}/folder.h5"], "folder.h5"),
    ("identify wrong suffix", ["identify", "{F}/wrong.suffix"], "wrong.suffix"),
    ("identify truncated npz", ["identify", "{F}/truncated.npz"], "truncated.npz"),
    ("identify random npz", ["identify", "{F}/random.npz"], "random.npz"),
    ("identify empty npz", ["identify", "{F}/empty.npz"], "empty.npz"),
    ("identify pickled npz", ["identify", "{F}/pickled.npz"], "pickled.npz"),
    ("identify junk HDF5", ["identify", "{F}/junk.h5"], "junk.h5"),
    ("identify text as HDF5", ["identify", "{F}/text.h5"], "text.h5"),
    ("identify empty HDF5", ["identify", "{F}/data.csv.h5"], "data.csv.h5"),
    ("identify header list", ["identify", "{F}/header_list.npz"], "header_list.npz"),
    ("identify header not JSON", ["identify", "{F}/header_bad.npz"], "header_bad.npz"),
    ("identify header version text", ["identify", "{F}/header_version.npz"], "header_version.npz"),
    ("identify newer version", ["identify", "{F}/newer.npz"], "newer.npz"),
    ("identify foreign format", ["identify", "{F}/foreign.npz"], "foreign.npz"),
    ("identify string positions npz", ["identify", "{F}/strings.npz"], "strings.npz"),
    ("identify NaN times", ["identify", "{F}/nan_times.npz"], "times"),
    ("identify decreasing times", ["identify", "{F}/decreasing.npz"], "times"),
    ("identify times mismatch", ["identify", "{F}/mismatch.npz"], "times"),
    ("identify rank-5 positions", ["identify", "{F}/rank5.npz"], "positions"),
    ("identify no times", ["identify", "{F}/no_times.npz"], "times"),
    ("identify HDF5 external link", ["identify", "{F}/external_link.h5"], "external_link.h5"),
    ("identify HDF5 soft link", ["identify", "{F}/soft_link.h5"], "soft_link.h5"),
    ("identify HDF5 external extras", ["identify", "{F}/external_extras.h5"], "external_extras.h5"),
    ("identify HDF5 external storage", ["identify", "{F}/external_storage.h5"], "external_storage.h5"),
    ("identify HDF5 virtual dataset", ["identify", "{F}/virtual.h5"], "virtual.h5"),
    ("identify HDF5 integer header", ["identify", "{F}/header_int.h5"], "header_int.h5"),
    ("identify HDF5 string positions", ["identify", "{F}/string_positions.h5"], "string_positions.h5"),
    ("identify HDF5 group positions", ["identify", "{F}/group_positions.h5"], "group_positions.h5"),
    ("identify HDF5 no positions", ["identify", "{F}/no_positions.h5"], "no_positions.h5"),
    # identify: options
    ("identify unknown library", IDENTIFY + ["--library", "no_such_library"], "library"),
    ("identify missing library file", IDENTIFY + ["--library", "{F}/missing_library.yaml"], "missing_library.yaml"),
    ("identify library YAML syntax", IDENTIFY + ["--library", "{F}/library_bad.yaml"], "library_bad.yaml"),
    ("identify library python tag", IDENTIFY + ["--library", "{F}/library_tag.yaml"], "library_tag.yaml"),
    ("identify unknown test functions", IDENTIFY + ["--test-functions", "no_such_preset"], "test"),
    ("identify grid-shape one", IDENTIFY + ["--grid-shape", "1"], "--grid-shape"),
    ("identify grid-shape negative", IDENTIFY + ["--grid-shape", "-4"], "--grid-shape"),
    ("identify grid-shape huge", IDENTIFY + ["--grid-shape", "300000000"], "--grid-shape"),
    ("identify noise negative", IDENTIFY + ["--noise", "-0.5"], "noise"),
    ("identify noise NaN", IDENTIFY + ["--noise", "nan"], "noise"),
    ("identify seed negative", IDENTIFY + ["--noise", "0.1", "--seed", "-1"], "seed"),
    ("identify device nonsense", IDENTIFY + ["--device", "toaster"], "device"),
    ("identify device cuda:99", IDENTIFY + ["--device", "cuda:99"], "device"),
    ("identify json parent is a file", IDENTIFY + ["--json", "{F}/afile/model.json"], "afile"),
    # report
    ("report only matches nothing", ["report", "--only", "zzz", "--out", "rep"], "--only"),
    ("report only two, one unknown", ["report", "--only", "core", "--only", "zzz", "--out", "rep"], "zzz"),
    ("report out under a file", ["report", "--only", "core", "--out", "{F}/afile/rep", "--quick", "--no-progress"],
     "afile"),
]

_CUDA_CASES = {"simulate device cuda:99", "identify device cuda:99"}


@pytest.mark.parametrize("name, argv, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing(name, argv, fragment, files, tmp_path, monkeypatch,
                                                             capsys):
    if name in _CUDA_CASES and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("this machine has 100 GPUs")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{F}", str(files)) for a in argv]
    inputs_before = sorted(p.name for p in files.iterdir())
    started = time.perf_counter()
    try:
        code = torchmf_main(argv)
    except SystemExit as exit_request:
        code = exit_request.code
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (name, code, captured.err[-2000:])
    assert "Traceback" not in captured.err
    assert len(lines) == 1, (name, lines)
    assert ": error: " in lines[0] and fragment in lines[0], (name, lines[0])
    assert not re.search(r"/\.[^/\s']+\.(\d+\.|tmp)", lines[0]), lines[0]  # never a hidden temporary file
    assert list(tmp_path.iterdir()) == [], (name, list(tmp_path.iterdir()))  # nothing written, no empty folder
    assert sorted(p.name for p in files.iterdir()) == inputs_before  # inputs untouched, no temp files
    assert not (tmp_path / "pwned").exists() and not (files / "pwned").exists()
    if "1e10" in name or "huge" in name:
        assert seconds < 1.0, (name, seconds)  # refused up front, not after allocating
    _record(name, lines[0])


# ---------------------------------------------------------------------------------------------------
# API cases: (id, call, exception type, fragment naming the argument)
# ---------------------------------------------------------------------------------------------------
X = torch.randn(1, 30, 1)
OBSERVATIONS = ParticleObservations(torch.randn(1, 2, 30, 1), times=[0.0, 1.0])
BASE = McKeanVlasovSDE(1, external_force=lambda x: -x, diffusion=0.1)


def _load(name):
    return lambda files: Trajectories.load(files / name)


API_CASES = [
    # Grid
    ("Grid 1e6^2", lambda f: Grid(-1, 1, 10 ** 6, dim=2), ValueError, "shape"),
    ("Grid 300000^2", lambda f: Grid(0, 1, 300000, dim=2), ValueError, "shape"),
    ("Grid 1e4^3", lambda f: Grid(0, 1, 10 ** 4, dim=3), ValueError, "shape"),
    ("Grid shape one", lambda f: Grid(0, 1, 1), ValueError, "shape"),
    ("Grid shape float", lambda f: Grid(0, 1, 10.5), TypeError, "shape"),
    ("Grid upper below lower", lambda f: Grid(1, 0, 10), ValueError, "upper"),
    ("Grid NaN corner", lambda f: Grid(NAN, 1, 10), ValueError, "upper"),
    ("Grid inf corner", lambda f: Grid(0, INF, 10), ValueError, "upper"),
    ("Grid periodic not bool", lambda f: Grid(0, 1, 10, periodic="yes"), TypeError, "periodic"),
    ("Grid mismatched corners", lambda f: Grid([0, 0], [1, 1, 1], 10), ValueError, "lower"),
    # simulations sized up front
    ("simulate 1e10 particles", lambda f: systems.get("ou_linear").simulate(n_particles=10 ** 10, progress=False),
     ValueError, "n_particles"),
    ("simulate 1e6 x 1e6 record", lambda f: systems.get("ou_linear").simulate(
        n_particles=10 ** 6, times=torch.linspace(0, 1, 10 ** 6), progress=False), ValueError, "n_particles"),
    ("sde.simulate huge record", lambda f: simulate(BASE, torch.zeros(1, 1, 1).expand(1, 10 ** 6, 1),
                                                    torch.linspace(0, 1, 10 ** 6), 0.1), ValueError, "x0"),
    ("check_fits beyond memory", lambda f: check_fits("size", 1e18), ValueError, "size"),
    ("check_fits NaN", lambda f: check_fits("size", NAN), ValueError, "size"),
    # seeds
    ("seed negative", lambda f: make_generator(-1, "cpu"), ValueError, "seed"),
    ("seed 2^64", lambda f: make_generator(2 ** 64, "cpu"), ValueError, "seed"),
    ("seed float", lambda f: make_generator(1.5, "cpu"), TypeError, "seed"),
    ("seed bool", lambda f: check_seed("seed", True), TypeError, "seed"),
    ("system seed 2^70", lambda f: systems.get("ou_linear").simulate(n_particles=5, seed=2 ** 70, progress=False),
     ValueError, "seed"),
    # divergence
    ("double_well dt 5", lambda f: systems.get("double_well").simulate(
        n_particles=50, dt=5.0, record_dt=5.0, t_end=20.0, progress=False), ValueError, "dt"),
    ("sde.simulate blow-up", lambda f: simulate(McKeanVlasovSDE(1, external_force=lambda x: x ** 3), torch.ones(1, 5, 1),
                                                torch.linspace(0, 10, 11), 1.0), ValueError, "dt"),
    ("guard NaN", lambda f: DivergenceGuard(torch.zeros(1, 3, 1), 0.1)(torch.full((1, 3, 1), NAN), 1.0),
     ValueError, "dt"),
    ("guard beyond bound", lambda f: DivergenceGuard(torch.zeros(1, 3, 1), 0.1)(torch.full((1, 3, 1), 1e7), 1.0),
     ValueError, "diverged"),
    # --param parsing
    ("params without =", lambda f: parse_key_values(["a"], "--param"), ValueError, "--param"),
    ("params YAML", lambda f: parse_key_values(["a=[1"], "--param"), ValueError, "--param"),
    ("params tag", lambda f: parse_key_values(["a=!!python/object/apply:os.system ['true']"], "--param"), ValueError,
     "--param"),
    ("params empty key", lambda f: parse_key_values([" =1"], "--param"), ValueError, "--param"),
    # pretrained
    ("pretrained ../", lambda f: pretrained.load("../checkpoints/averaged-cubic"), ValueError, "name"),
    ("pretrained absolute", lambda f: pretrained.load(str(pretrained.CHECKPOINT_DIR / "averaged-cubic")), ValueError,
     "name"),
    ("pretrained unknown", lambda f: pretrained.load("no-such-model"), ValueError, "name"),
    ("pretrained not a string", lambda f: pretrained.load(3), TypeError, "name"),
    ("pretrained info ../", lambda f: pretrained.info("../../etc/passwd"), ValueError, "name"),
    ("pretrained builder outside allow-list", lambda f: pretrained._builder("torchmf.data.files:write_json"), ValueError,
     "builder"),
    ("pretrained builder os", lambda f: pretrained._builder("os:system"), ValueError, "builder"),
    ("pretrained save name with slash", lambda f: pretrained.save("../x", {}, pretrained.BUILDERS[0], "", {}, {},
                                                                  directory=f), ValueError, "name"),
    ("pretrained missing payload", lambda f: pretrained.load_payload(f / "missing.pt"), FileNotFoundError, "path"),
    ("pretrained payload folder", lambda f: pretrained.load_payload(f / "folder.h5"), ValueError, "folder"),
    ("pretrained pickle payload", lambda f: pretrained.load_payload(_evil_pickle(f / "evil.pt")), ValueError, "path"),
    # loaders
    ("load missing", _load("missing.h5"), FileNotFoundError, "path"),
    ("load folder", _load("folder.h5"), IsADirectoryError, "folder.h5"),
    ("load wrong suffix", _load("wrong.suffix"), ValueError, "path"),
    ("load truncated npz", _load("truncated.npz"), ValueError, "truncated.npz"),
    ("load random npz", _load("random.npz"), ValueError, "random.npz"),
    ("load empty npz", _load("empty.npz"), ValueError, "empty.npz"),
    ("load pickled npz", _load("pickled.npz"), ValueError, "pickled.npz"),
    ("load junk HDF5", _load("junk.h5"), ValueError, "junk.h5"),
    ("load external link", _load("external_link.h5"), ValueError, "ExternalLink"),
    ("load soft link", _load("soft_link.h5"), ValueError, "SoftLink"),
    ("load external extras", _load("external_extras.h5"), ValueError, "extras"),
    ("load external storage", _load("external_storage.h5"), ValueError, "external"),
    ("load virtual dataset", _load("virtual.h5"), ValueError, "virtual"),
    ("load integer header", _load("header_int.h5"), ValueError, "header"),
    ("load string positions", _load("string_positions.h5"), ValueError, "positions"),
    ("load group positions", _load("group_positions.h5"), ValueError, "positions"),
    ("load header list", _load("header_list.npz"), ValueError, "header"),
    ("load header version text", _load("header_version.npz"), ValueError, "header"),
    ("load newer version", _load("newer.npz"), ValueError, "version"),
    ("plain arrays external link", lambda f: read_plain_arrays(f / "external_link.h5"), ValueError, "ExternalLink"),
    ("plain arrays soft link", lambda f: read_plain_arrays(f / "soft_link.h5"), ValueError, "SoftLink"),
    ("plain arrays virtual", lambda f: read_plain_arrays(f / "virtual.h5"), ValueError, "virtual"),
    ("plain arrays external storage", lambda f: read_plain_arrays(f / "external_storage.h5"), ValueError, "external"),
    ("plain arrays truncated npz", lambda f: read_plain_arrays(f / "truncated.npz"), ValueError, "truncated.npz"),
    ("plain arrays pickled npz", lambda f: read_plain_arrays(f / "pickled.npz"), ValueError, "pickled.npz"),
    ("read_hdf5_array link", lambda f: _read_one(f / "external_link.h5", "positions"), ValueError, "ExternalLink"),
    ("read_hdf5_array missing", lambda f: _read_one(f / "good.h5", "nothing"), ValueError, "nothing"),
    # writes
    ("save under a file", lambda f: Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0)).save(f / "afile" / "x.h5"),
     NotADirectoryError, "afile"),
    ("save csv", lambda f: Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0)).save(f / "x.csv"), ValueError,
     "path"),
    ("atomic_path under a file", lambda f: _atomic_write(f / "afile" / "y.txt"), NotADirectoryError, "afile"),
    # nudging
    ("nudge scheme unknown", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, 1.0, scheme="semi"), ValueError, "scheme"),
    ("nudge implicit pairwise", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, 1.0, backend="pairwise",
                                                    scheme="implicit"), ValueError, "scheme"),
    ("nudge implicit substeps zero", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, 1.0, implicit_substeps=0), ValueError,
     "implicit_substeps"),
    ("nudge strength NaN", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, NAN), ValueError, "strength"),
    ("nudge strength inf", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, INF), ValueError, "strength"),
    ("nudge strength negative", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, -1.0), ValueError, "strength"),
    ("nudge bandwidth zero", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.0, 1.0), ValueError, "bandwidth"),
    ("nudge substeps zero", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, 1.0, substeps=0), ValueError, "substeps"),
    ("nudge huge default grid", lambda f: NudgedSDE(BASE, OBSERVATIONS, 0.2, 1.0, grid_shape=10 ** 11), ValueError,
     "shape"),
    # LOT (the message used to say "expected 2k+1 = 3 snapshots for k = 2")
    ("lot_velocity k mismatch", lambda f: _lot_velocity(torch.randn(3, 10, 1), 0.1, k=2), ValueError, "2k+1 = 5"),
    ("lot_velocity even count", lambda f: _lot_velocity(torch.randn(4, 10, 1), 0.1), ValueError, "snapshots"),
    # interaction
    ("pairwise NaN queries", lambda f: InteractionForce(GaussianKernel(0.5))(torch.full((4, 1), NAN)), ValueError, "x"),
    ("interaction unknown backend", lambda f: InteractionForce(GaussianKernel(0.5), backend="fast"), ValueError,
     "backend"),
]


def _lot_velocity(*args, **kwargs):
    from torchmf.lot import lot_velocity

    return lot_velocity(*args, **kwargs)


def _evil_pickle(path: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    path.write_bytes(pickle.dumps({"state": Evil()}))
    return path


def _read_one(path: Path, name: str):
    with h5py.File(path, "r") as handle:
        return read_hdf5_array(handle, name, path)


def _atomic_write(path: Path):
    with atomic_path(path) as temporary:
        temporary.write_text("x")


@pytest.mark.parametrize("name, call, error, fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_named_error(name, call, error, fragment, files, tmp_path):
    before = sorted(p.name for p in files.iterdir())
    started = time.perf_counter()
    with pytest.raises(error) as caught:
        call(files)
    seconds = time.perf_counter() - started
    assert isinstance(caught.value, (ValueError, TypeError, OSError)), type(caught.value)
    message = str(caught.value)
    assert fragment in message, (name, message)
    assert "\n" not in message.strip(), (name, message)
    assert not (files / "pwned").exists()  # nothing from a file ever ran
    after = sorted(p.name for p in files.iterdir() if p.name not in ("evil.pt",))
    assert after == [n for n in before if n != "evil.pt"]  # no temporary files left
    if "huge" in name or "1e10" in name or "^2" in name or "^3" in name:
        assert seconds < 1.0, (name, seconds)
    _record(name, message)


def test_catalogue_has_at_least_200_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 200, len(CLI_CASES) + len(API_CASES)


# ---------------------------------------------------------------------------------------------------
# security: a URL checkpoint is refused before anything is fetched or unpickled
# ---------------------------------------------------------------------------------------------------
class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        return super().do_GET()

    def log_message(self, *args):
        pass


def test_url_checkpoint_is_refused_and_nothing_is_fetched_or_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    from trainers.cli import main as train_main

    served = tmp_path / "served"
    served.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (served / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil(), "pytorch-lightning_version": "2.0"}))
    handler = lambda *a, **k: _CountingHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.chdir(tmp_path)
    _CountingHandler.requests.clear()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
        config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "fastslow_cubic_neural.yaml"
        code = train_main(["validate", "-c", str(config), "--ckpt_path", url])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "ckpt_path" in line]
    assert code == 2, err[-2000:]
    assert lines and "remote" in lines[-1] and "Traceback" not in err
    assert _CountingHandler.requests == []  # nothing was fetched
    assert not marker.exists()  # nothing ran
    assert not hub.exists() or not any(hub.rglob("*.ckpt"))  # nothing cached for later runs


@pytest.mark.parametrize("ckpt_path, fragment", [("s3://bucket/x.ckpt", "remote"), ("registry:model", "remote"),
                                                 ("file:///etc/passwd", "remote"), ("missing.ckpt", "missing.ckpt")])
def test_other_non_local_checkpoints_are_refused(ckpt_path, fragment, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    from trainers.cli import _check_ckpt_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=fragment):
        _check_ckpt_path(ckpt_path)


def test_pickled_local_checkpoint_is_refused_without_running(tmp_path, capsys):
    pytest.importorskip("lightning")
    from trainers.cli import main as train_main

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = tmp_path / "evil.ckpt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": Evil()}))
    config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "fastslow_cubic_neural.yaml"
    code = train_main(["validate", "-c", str(config), "--ckpt_path", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "ckpt_path" in err and "Traceback" not in err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# writes: killed writers leave nothing under the final name; their temporaries are swept
# ---------------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    target = tmp_path / "data.h5"
    dead = tmp_path / f".data.h5.{_dead_pid()}.abc123.h5"
    live = tmp_path / f".data.h5.{os.getppid()}.def456.h5"  # our parent process is alive
    other = tmp_path / f".other.h5.{_dead_pid()}.xyz.h5"  # another target's temporary: not ours to sweep
    for path in (dead, live, other):
        path.write_bytes(b"half written")
    Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0)).save(target)
    assert not dead.exists() and live.exists() and other.exists()
    assert Trajectories.load(target).n_particles == 3
    assert sweep_stale_temporaries(target) == []


_WRITER = """
import sys, torch
from torchmf import Trajectories
data = Trajectories(torch.randn(1, 20, 200000, 2), torch.arange(20.0))
print("ready", flush=True)
while True:
    data.save(sys.argv[1])
"""


def test_sigkill_during_writes_leaves_no_half_written_file_and_the_next_write_sweeps(tmp_path):
    target = tmp_path / "run.h5"
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert process.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while not any(p.name.startswith(".run.h5.") for p in tmp_path.iterdir()) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".run.h5.")]
    if target.exists():  # a complete earlier write, never a half-written one
        assert Trajectories.load(target).n_particles == 200000
    Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0)).save(target)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".run.h5.")] == []
    assert leftovers, "the kill should have caught a write in progress"
    assert math.isclose(float(Trajectories.load(target).times[-1]), 1.0)


# ---------------------------------------------------------------------------------------------------
# torchmf-train: Lightning's own checks and ours end in one line, exit 2
# ---------------------------------------------------------------------------------------------------
TRAIN_CASES = [
    ("threads negative", ["--threads", "-2"], "threads"),
    ("threads zero", ["--threads", "0"], "threads"),
    ("max_steps -5", ["--trainer.max_steps", "-5"], "max_steps"),
    ("max_epochs -3", ["--trainer.max_epochs", "-3"], "max_epochs"),
    ("precision 7", ["--trainer.precision", "7"], "7"),
    ("seed_everything -1", ["--seed_everything", "-1"], "-1"),
    ("weights_only false", ["--weights_only", "false"], "weights_only"),
    ("ckpt_path missing", ["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
    ("ckpt_path folder", ["--ckpt_path", "."], "ckpt_path"),
    ("ckpt_path https", ["--ckpt_path", "https://example.invalid/x.ckpt"], "remote"),
    # these two build the data and the trainer before Lightning resolves "last" (~14 s each)
    pytest.param("ckpt_path last is a pickle", ["--ckpt_path", "last"], "last.ckpt", marks=pytest.mark.slow),
    pytest.param("ckpt_path last is truncated", ["--ckpt_path", "last"], "last.ckpt", marks=pytest.mark.slow),
]


def _rebind_log_handlers():
    # Lightning's log handlers keep the stderr of the test that first imported it; capsys closes that
    # stream after the test, and logging would then print "--- Logging error ---" with a traceback
    import logging

    names = [name for name in logging.root.manager.loggerDict if name.startswith(("lightning", "pytorch_lightning"))]
    for logger in map(logging.getLogger, names):
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream


@pytest.mark.parametrize("name, options, fragment", TRAIN_CASES,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in TRAIN_CASES])
def test_train_cli_bad_input_is_one_line_exit_2(name, options, fragment, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    from trainers.cli import main as train_main

    monkeypatch.chdir(tmp_path)
    _rebind_log_handlers()
    marker = tmp_path / "ran"
    if "last" in options:  # the config's checkpoint folder, relative to the working folder
        folder = tmp_path / "runs" / "train" / "fastslow_cubic_neural" / "checkpoints"
        folder.mkdir(parents=True)

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        payload = pickle.dumps({"state_dict": Evil()}) if "pickle" in name else b"PK\x03\x04 truncated"
        (folder / "last.ckpt").write_bytes(payload)
    config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "fastslow_cubic_neural.yaml"
    code = train_main(["fit", "-c", str(config), "--trainer.max_steps", "1"] + options
                      if "max_steps" not in name else ["fit", "-c", str(config)] + options)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchmf-train: error:")]
    assert code == 2, (name, err[-2000:])
    assert "Traceback" not in err
    assert len(errors) == 1 and fragment in errors[0], (name, errors)
    _record(name, errors[0])
    assert not marker.exists()
    assert not [p for p in tmp_path.rglob("*.ckpt") if p.name != "last.ckpt"]  # no checkpoint was written


# ===================================================================================================
# issue 25: own-data tables and files, output paths, recipes and checkpoints naming code
# ===================================================================================================
# every message names the file and, for a table, the column and the row (rows counted from 1 after
# the header, with the file line); a table's entry points: three API readers and three commands
_GOOD_ROWS = "1,0,0.5,0.1\n2,0,0.7,0.2\n1,1,0.6,0.1\n2,1,0.8,0.3\n"
_HEADER = "particle,frame,x,y\n"
_HUGE_FIELD = "1,1,\"" + "9" * 140_000 + "\n"  # an unclosed quote swallows the rest: over csv's field limit

#: (file name, content, fragments the one line must hold besides the file name)
BAD_TABLES = [
    ("text_x.csv", _HEADER + "1,0,0.5,0.1\n1,1,abc,0.2\n", ["'x'", "row 2 (line 3)", "'abc'"]),
    ("text_y.csv", _HEADER + _GOOD_ROWS + "3,0,0.1,north\n", ["'y'", "row 5 (line 6)", "'north'"]),
    ("plus_inf.csv", _HEADER + _GOOD_ROWS + "3,0,inf,0.2\n", ["'x'", "row 5", "infinite"]),
    ("minus_inf.csv", _HEADER + "1,0,0.5,-inf\n" + _GOOD_ROWS, ["'y'", "row 1 (line 2)", "infinite"]),
    ("infinity_word.csv", _HEADER + "1,0,Infinity,0.1\n" + _GOOD_ROWS, ["'x'", "row 1", "infinite"]),
    ("overflow.csv", _HEADER + "1,0,1e999,0.1\n" + _GOOD_ROWS, ["'x'", "row 1", "infinite"]),
    ("minus_overflow.csv", _HEADER + _GOOD_ROWS + "3,1,0.1,-1e999\n", ["'y'", "row 5", "infinite"]),
    ("hex_value.csv", _HEADER + "1,0,0x1F,0.1\n" + _GOOD_ROWS, ["'x'", "row 1", "'0x1F'"]),
    ("comma_decimal.csv", "particle;frame;x;y\n1;0;0,5;0,1\n2;0;0,7;0,2\n", ["'x'", "row 1", "'0,5'"]),
    ("text_frame.csv", _HEADER + "1,zero,0.5,0.1\n" + _GOOD_ROWS, ["'frame'", "row 1", "'zero'"]),
    ("empty_frame.csv", _HEADER + _GOOD_ROWS + "3,,0.5,0.1\n", ["'frame'", "row 5", "empty"]),
    ("nan_frame.csv", _HEADER + _GOOD_ROWS + "3,nan,0.5,0.1\n", ["'frame'", "row 5", "NaN"]),
    ("inf_frame.csv", _HEADER + _GOOD_ROWS + "3,inf,0.5,0.1\n", ["'frame'", "row 5", "infinite"]),
    ("empty_id.csv", _HEADER + _GOOD_ROWS + ",1,0.5,0.1\n", ["'particle'", "row 5", "empty"]),
    ("extra_field.csv", _HEADER + "1,0,0.5,0.1\n1,1,0.6,0.2,9\n", ["line 3", "5 fields", "header has 4"]),
    ("missing_field.csv", _HEADER + _GOOD_ROWS + "3,1,0.6\n", ["line 6", "3 fields", "header has 4"]),
    ("header_only.csv", _HEADER, ["header row and at least one data row"]),
    ("empty.csv", "", ["header row and at least one data row"]),
    ("comments_only.csv", "# exported by a tracker\n# nothing tracked\n", ["header row and at least one data row"]),
    ("huge_field.csv", _HEADER + "1,0,0.5,0.1\n" + _HUGE_FIELD, ["line 3", "131072 characters"]),
    ("latin1.csv", _HEADER.encode() + "1,0,0.5,0.1\n1,1,0.6,\xb0\n".encode("latin-1"), ["not UTF-8", "0xb0"]),
    ("binary.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), ["not UTF-8"]),
    ("repeated_pair.csv", _HEADER + _GOOD_ROWS + "2,1,0.9,0.3\n", ["row 4 (line 5)", "row 5 (line 6)", "same"]),
    ("repeated_column.csv", "particle,frame,x,x\n1,0,0.5,0.1\n", ["['x']", "more than once"]),
    ("empty_column_name.csv", "particle,frame,x,\n1,0,0.5,0.1\n", ["empty column name"]),
    ("no_id_column.csv", "track,frame,x,y\n1,0,0.5,0.1\n", ["'particle'", "columns found", "track"]),
    ("no_frame_column.csv", "particle,t,x,y\n1,0,0.5,0.1\n", ["'frame'", "columns found"]),
    ("no_coordinates.csv", "particle,frame,u,v\n1,0,0.5,0.1\n", ["x/y/z", "columns found"]),
]
_TABLE_NAMES = [name for name, _, _ in BAD_TABLES]


def _write_tables(root: Path) -> None:
    for name, content, _ in BAD_TABLES:
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "folder.csv").mkdir()
    (root / "recipe_folder.yaml").mkdir()
    header = json.dumps({"format": "torchmf.trajectories", "version": 1, "meta": {}})
    positions = np.zeros((1, 3, 4, 2))
    for name, value in (("plus_inf", INF), ("minus_inf", -INF)):
        infinite = positions.copy()
        infinite[0, 1, 2, 0] = value
        _npz(root / f"{name}_positions.npz", header=np.array(header), positions=infinite, times=np.arange(3.0))
        with h5py.File(root / f"{name}_positions.h5", "w") as handle:
            handle.attrs["header"] = header
            handle["positions"] = infinite
            handle["times"] = np.arange(3.0)
    with h5py.File(root / "extras_dataset.h5", "w") as handle:  # extras/NAME expected, a dataset given
        handle.attrs["header"] = header
        handle["positions"], handle["times"] = positions, np.arange(3.0)
        handle["extras"] = np.zeros((1, 3, 4, 1))
    with h5py.File(root / "extras_text.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["positions"], handle["times"] = positions, np.arange(3.0)
        handle["extras"] = np.array([b"velocity"])
    with h5py.File(root / "extras_nested.h5", "w") as handle:  # a group inside extras instead of a dataset
        handle.attrs["header"] = header
        handle["positions"], handle["times"] = positions, np.arange(3.0)
        handle.create_group("extras/velocity")
    with h5py.File(root / "extras_strings.h5", "w") as handle:
        handle.attrs["header"] = header
        handle["positions"], handle["times"] = positions, np.arange(3.0)
        handle["extras/label"] = np.array([b"a", b"b"])


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    _write_tables(root)
    return root


#: (file name, fragments) of particle files (not tables) that are refused
BAD_PARTICLE_FILES = [
    ("plus_inf_positions.npz", ["'positions'", "+-inf", "[0, 1, 2, 0]"]),
    ("minus_inf_positions.npz", ["'positions'", "+-inf"]),
    ("plus_inf_positions.h5", ["'positions'", "+-inf"]),
    ("minus_inf_positions.h5", ["'positions'", "+-inf", "NaN"]),
    ("extras_dataset.h5", ["'extras' is a Dataset", "group"]),
    ("extras_text.h5", ["'extras'", "expected"]),
    ("extras_nested.h5", ["'velocity' is a Group"]),
    ("extras_strings.h5", ["'label'", "expected numbers"]),
    ("folder.csv", ["folder"]),
    ("absent.csv", ["absent.csv"]),
]


def _table_api(reader: str):
    from torchmf.data import read_observations, read_particle_data

    calls = {"Trajectories.from_tracks": lambda path: Trajectories.from_tracks(path),
             "read_particle_data": lambda path: read_particle_data(path),
             "read_observations": lambda path: read_observations(path, frame_dt=0.1)}
    return calls[reader]


_TABLE_READERS = ["Trajectories.from_tracks", "read_particle_data", "read_observations"]
TABLE_API_CASES = [(f"{reader} {name}", reader, name, fragments)
                   for reader in _TABLE_READERS for name, _, fragments in BAD_TABLES] + \
    [(f"{reader} {name}", reader, name, fragments) for reader in _TABLE_READERS
     for name, fragments in BAD_PARTICLE_FILES if not (reader == "Trajectories.from_tracks" and "." in name
                                                       and not name.endswith(".csv"))] + \
    [(f"Trajectories.load {name}", "Trajectories.load", name, fragments)
     for name, fragments in BAD_PARTICLE_FILES if not name.endswith(".csv")]


@pytest.mark.parametrize("name, reader, file_name, fragments", TABLE_API_CASES, ids=[c[0] for c in TABLE_API_CASES])
def test_table_and_file_readers_name_the_file_column_and_row(name, reader, file_name, fragments, tables):
    call = (lambda path: Trajectories.load(path)) if reader == "Trajectories.load" else _table_api(reader)
    with pytest.raises((ValueError, TypeError, OSError)) as caught:
        call(tables / file_name)
    message = _os_or_plain(caught.value)
    assert "\n" not in message.strip(), (name, message)
    assert file_name in message, (name, message)
    for fragment in fragments:
        assert fragment in message, (name, fragment, message)
    _record(name, message)


def _os_or_plain(error: BaseException) -> str:
    from torchmf._errors import user_message

    return user_message(error) if isinstance(error, OSError) else str(error)


def _record(name: str, message: str) -> None:
    """Append the case's message to $TORCHMF_CATALOGUE_LOG (JSON lines) to read every message at once."""
    log = os.environ.get("TORCHMF_CATALOGUE_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"case": name, "message": message}) + "\n")


#: a slow series (time, x): (file name, content, fragments)
BAD_SERIES = [
    ("series_text.csv", "time,x\n0,0.1\n0.1,abc\n0.2,0.3\n", ["'x'", "row 2 (line 3)", "'abc'"]),
    ("series_inf.csv", "time,x\n0,0.1\n0.1,inf\n0.2,0.3\n", ["'x'", "row 2", "infinite"]),
    ("series_minus_inf.csv", "time,x\n0,-inf\n0.1,0.2\n0.2,0.3\n", ["'x'", "row 1", "infinite"]),
    ("series_empty_value.csv", "time,x\n0,0.1\n0.1,\n0.2,0.3\n", ["'x'", "row 2", "empty"]),
    ("series_nan_value.csv", "time,x\n0,0.1\n0.1,NaN\n0.2,0.3\n", ["'x'", "row 2", "NaN"]),
    ("series_text_time.csv", "time,x\n0,0.1\nlater,0.2\n0.2,0.3\n", ["'time'", "row 2", "'later'"]),
    ("series_inf_time.csv", "time,x\n0,0.1\n0.1,0.2\ninf,0.3\n", ["'time'", "row 3", "infinite"]),
    ("series_empty_time.csv", "time,x\n0,0.1\n,0.2\n0.2,0.3\n", ["'time'", "row 2", "empty"]),
    ("series_ragged.csv", "time,x\n0,0.1\n0.1,0.2,7\n", ["line 3", "3 fields"]),
    ("series_huge.csv", "time,x\n0,0.1\n0.1,\"" + "1" * 140_000 + "\n", ["line 3", "131072"]),
    ("series_latin1.csv", b"time,x\n0,0.1\n0.1,\xe90\n", ["not UTF-8"]),
    ("series_no_time.csv", "t,x\n0,0.1\n0.1,0.2\n", ["time", "'t'"]),
    ("series_header_only.csv", "time,x\n", ["header row"]),
    ("series_decreasing.csv", "time,x\n0,0.1\n0.2,0.2\n0.1,0.3\n", ["strictly increasing", "time point 3 (0.1)"]),
    ("series_repeated_time.csv", "time,x\n0,0.1\n0.1,0.2\n0.1,0.3\n", ["strictly increasing", "time point 3"]),
    ("series_repeated_column.csv", "time,x,x\n0,0.1,0.2\n0.1,0.2,0.3\n", ["['x']", "more than once"]),
]


@pytest.mark.parametrize("file_name, content, fragments", BAD_SERIES, ids=[c[0] for c in BAD_SERIES])
def test_series_reader_names_the_file_column_and_row(file_name, content, fragments, tmp_path):
    from torchmf.data import read_series

    path = tmp_path / file_name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as caught:
        read_series(path)
    message = str(caught.value)
    assert "\n" not in message.strip() and file_name in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    _record(f"read_series {file_name}", message)


def _frame_dt(path: str):  # a table counts frames: its time step is given; a particle file has its times
    return ["--frame-dt", "0.1"] if path.endswith(".csv") else []


_COMMANDS = {
    "identify": lambda path: ["identify", path, *_frame_dt(path)],
    "nudge": lambda path: ["nudge", "--observations", path, "--model", "ou_linear", *_frame_dt(path), "--out",
                           "nudge_out", "--no-progress"],
    "lot": lambda path: ["lot", "--snapshots", path, "--horizon", "1", *_frame_dt(path), "-o", "forecast.npz",
                         "--no-progress"],
}
TABLE_CLI_CASES = [(f"{command} {name}", _COMMANDS[command]("{T}/" + name), [name] + fragments)
                   for command in _COMMANDS for name, _, fragments in BAD_TABLES] + \
    [(f"{command} {name}", _COMMANDS[command]("{T}/" + name), [name] + fragments)
     for command in _COMMANDS for name, fragments in BAD_PARTICLE_FILES] + [
    # outputs the user named, reported under that name (never the hidden temporary's)
    ("simulate -o under /proc", ["simulate", "ou_linear", "--particles", "20", "--t-end", "0.1", "--no-progress",
                                 "-o", "/proc/x.h5"], ["'/proc/x.h5'"]),
    ("simulate -o under /sys", ["simulate", "ou_linear", "--particles", "20", "--t-end", "0.1", "--no-progress",
                                "-o", "/sys/x.npz"], ["'/sys/x.npz'"]),
    ("simulate -o in a folder under /proc", ["simulate", "ou_linear", "--particles", "20", "--t-end", "0.1",
                                             "--no-progress", "-o", "/proc/runs/x.h5"],
     ["'/proc/runs/x.h5'", "cannot create its folder '/proc/runs'"]),
    ("recipe is a folder", ["simulate", "{T}/recipe_folder.yaml", "-o", "out.h5", "--no-progress"],
     ["recipe_folder.yaml", "folder"]),
    ("recipe is a missing file", ["simulate", "{T}/absent_recipe.yaml", "-o", "out.h5"],
     ["absent_recipe.yaml", "does not exist"]),
]


@pytest.mark.parametrize("name, argv, fragments", TABLE_CLI_CASES, ids=[c[0] for c in TABLE_CLI_CASES])
def test_cli_reading_a_bad_table_or_file_is_one_located_line(name, argv, fragments, files, tables, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{T}", str(tables)).replace("{F}", str(files)) for a in argv]
    before = sorted(p.name for p in tables.iterdir())
    try:
        code = torchmf_main(argv)
    except SystemExit as exit_request:
        code = exit_request.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (name, code, captured.err[-2000:])
    assert "Traceback" not in captured.err and len(lines) == 1, (name, lines)
    for fragment in fragments:
        assert fragment in lines[0], (name, fragment, lines[0])
    assert not re.search(r"/\.[^/\s']+\.(\d+\.|tmp)", lines[0]), lines[0]  # never a hidden temporary file
    assert list(tmp_path.iterdir()) == [], (name, list(tmp_path.iterdir()))
    assert sorted(p.name for p in tables.iterdir()) == before
    _record(name, lines[0])


# -- readings that used to be silently wrong: each is read exactly as written --------------------------------
def _ids(rows: str, **options) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ids.csv"
        path.write_text("particle,frame,x\n" + rows)
        return Trajectories.from_tracks(path, **options).n_particles


SILENT_CASES = [
    ("ids 2^53 and 2^53+1 stay apart", lambda: _ids("9007199254740992,0,1\n9007199254740993,0,2\n"), 2),
    ("ids 2^63-1 and 2^63-2 stay apart", lambda: _ids("9223372036854775807,0,1\n9223372036854775806,0,2\n"), 2),
    ("ids beyond int64 stay apart", lambda: _ids("18446744073709551617,0,1\n18446744073709551616,0,2\n"), 2),
    ("negative ids stay apart", lambda: _ids("-9007199254740993,0,1\n-9007199254740992,0,2\n"), 2),
    ("7, 07 and +7 are one particle", lambda: _ids("7,0,1\n07,1,2\n+7,2,3\n"), 1),
    ("text ids 1.0 and 1 are two labels", lambda: _ids("1.0,0,1\n1,0,2\n"), 2),
    ("text ids keep case", lambda: _ids("cell_a,0,1\ncell_A,0,2\n"), 2),
    ("int64 ids in a dict stay apart", lambda: Trajectories.from_tracks(
        {"particle": np.array([2 ** 53, 2 ** 53 + 1], dtype=np.int64), "frame": np.zeros(2), "x": np.ones(2)}
    ).n_particles, 2),
    ("uint64 ids beyond int64 stay apart", lambda: Trajectories.from_tracks(
        {"particle": np.array([2 ** 64 - 1, 2 ** 64 - 2], dtype=np.uint64), "frame": np.zeros(2), "x": np.ones(2)}
    ).n_particles, 2),
    ("NaN coordinate is a particle not seen", lambda: int(Trajectories.from_tracks(
        {"particle": np.array([1, 2]), "frame": np.zeros(2), "x": np.array([1.0, NAN])}).counts().sum()), 1),
    ("inf coordinate in a dict is refused, not lost", lambda: _raises(lambda: Trajectories.from_tracks(
        {"particle": np.array([1, 2]), "frame": np.zeros(2), "x": np.array([1.0, INF])})), "infinite"),
    ("inf positions in from_arrays are refused, not lost", lambda: _raises(lambda: Trajectories.from_arrays(
        np.array([[[[1.0], [INF]]]]), [0.0])), "+-inf"),
    ("byte-order mark does not rename the id column", lambda: _bom_ids(), 2),
]


def _raises(call) -> str:
    try:
        call()
    except ValueError as error:
        return "infinite" if "infinite" in str(error) else ("+-inf" if "+-inf" in str(error) else str(error))
    return "no error"


def _bom_ids() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bom.csv"
        path.write_bytes("\ufeffparticle,frame,x\n1,0,1\n2,0,2\n".encode("utf-8"))
        return Trajectories.from_tracks(path).n_particles


@pytest.mark.parametrize("name, call, expected", SILENT_CASES, ids=[c[0] for c in SILENT_CASES])
def test_readings_that_were_silently_wrong_are_exact(name, call, expected):
    assert call() == expected


# -- checkpoints that name code: every train subcommand, nothing imported ------------------------------------
_CRAFTED = {
    "model class of the same last name": lambda m: {"_class_path": f"{m}.AveragedDynamicsModule"},
    "model class in a subpackage": lambda m: {"_class_path": f"{m}.inner.AveragedDynamicsModule"},
    "neural module of another path": lambda m: {"_class_path": f"{m}.trainers.averaged.AveragedDynamicsModule"},
    "system class_path": lambda m: {"_class_path": "trainers.AveragedDynamicsModule",
                                    "system": {"class_path": f"{m}.Sys", "init_args": {}}},
    "system dotted name": lambda m: {"_class_path": "trainers.averaged.AveragedDynamicsModule", "system": f"{m}.Sys"},
    "instantiator": lambda m: {"_class_path": "trainers.AveragedDynamicsModule", "_instantiator": f"{m}.make",
                               "hidden": f"{m}.Hidden"},
}
CHECKPOINT_CASES = [(f"{subcommand} {case}", subcommand, case) for subcommand in ("fit", "validate", "test", "predict")
                    for case in _CRAFTED]


@pytest.mark.parametrize("name, subcommand, case", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_a_checkpoint_naming_code_imports_nothing(name, subcommand, case, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lightning")
    from trainers.cli import main as train_main

    module = f"marker_{abs(hash(name)) % 10 ** 10}_{os.getpid()}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    _rebind_log_handlers()
    checkpoint = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": _CRAFTED[case](module), "state_dict": {}}, checkpoint)
    config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "fastslow_cubic_neural.yaml"
    code = train_main([subcommand, "-c", str(config), "--ckpt_path", str(checkpoint)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchmf-train: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, (name, err[-2000:])
    assert "nothing was imported" in errors[0] and module in errors[0], errors[0]
    assert not marker.exists() and module not in sys.modules
    _record(name, errors[0])


# -- torchmf-train: the user's data and class_path modules, one line each ------------------------------------
TRAIN_INPUT_CASES = [
    # (id, options with {D} = the case's folder, files to write there {name: text}, fragments)
    ("data path a series with text", ["--data.init_args.path", "{D}/s.csv"], {"s.csv": "time,x\n0,1\n0.1,abc\n"},
     ["s.csv", "'x'", "row 2"]),
    ("data path a series with inf", ["--data.init_args.path", "{D}/s.csv"], {"s.csv": "time,x\n0,1\n0.1,-inf\n"},
     ["s.csv", "'x'", "infinite"]),
    ("data path a series with a huge field", ["--data.init_args.path", "{D}/s.csv"],
     {"s.csv": "time,x\n0,1\n0.1,\"" + "2" * 140_000 + "\n"}, ["s.csv", "131072"]),
    ("data path is a folder", ["--data.init_args.path", "{D}"], {}, ["folder"]),
    ("data recipe is a folder", ["--data.init_args.recipe", "{D}"], {}, ["folder"]),
    ("model class_path module fails to import", ["--model", "broken_model_25.Model"],
     {"broken_model_25.py": "import no_such_package_25\n"}, ["broken_model_25.Model", "no_such_package_25"]),
    ("system class_path module fails to import", ["--model.init_args.system", "broken_system_25.System"],
     {"broken_system_25.py": "import no_such_package_25\n"}, ["broken_system_25.System", "no_such_package_25"]),
    ("system class_path module has a syntax error", ["--model.init_args.system", "syntax_system_25.System"],
     {"syntax_system_25.py": "def broken(:\n"}, ["syntax_system_25", "SyntaxError"]),
    ("system class_path module raises", ["--model.init_args.system", "raising_system_25.System"],
     {"raising_system_25.py": "raise RuntimeError('cannot start')\n"}, ["raising_system_25", "cannot start"]),
    ("system class_path class missing", ["--model.init_args.system", "empty_system_25.System"],
     {"empty_system_25.py": "X = 1\n"}, ["empty_system_25", "no class 'System'"]),
]


@pytest.mark.parametrize("name, options, written, fragments", TRAIN_INPUT_CASES, ids=[c[0] for c in TRAIN_INPUT_CASES])
def test_train_cli_user_data_and_modules_are_one_line(name, options, written, fragments, tmp_path, monkeypatch,
                                                      capsys):
    pytest.importorskip("lightning")
    from trainers.cli import main as train_main

    folder = tmp_path / "case"
    folder.mkdir()
    for file_name, text in written.items():
        (folder / file_name).write_text(text)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(tmp_path)
    _rebind_log_handlers()
    config = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "fastslow_cubic_neural.yaml"
    options = [option.replace("{D}", str(folder)) for option in options]
    code = train_main(["fit", "-c", str(config), "--trainer.max_steps", "1"] + options)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchmf-train: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, (name, err[-2000:])
    for fragment in fragments:
        assert fragment in errors[0], (name, fragment, errors[0])
    _record(name, errors[0])


def test_catalogue_counts_at_least_480_cases():
    old = len(CLI_CASES) + len(API_CASES) + len(TRAIN_CASES)
    new = len(TABLE_API_CASES) + len(BAD_SERIES) + len(TABLE_CLI_CASES) + len(SILENT_CASES) + len(CHECKPOINT_CASES) \
        + len(TRAIN_INPUT_CASES)
    assert old + new >= 480, (old, new)
