"""Bad inputs to WSINDy: each raises a clear ValueError/TypeError naming the argument or the cause.

Tried: NaN in the data; particles outside a given grid; too few time points for the support;
non-uniform times; tensor data without times; wrong-dimension preset; unknown preset; unknown
test-function key; duplicate library terms; all-zero and duplicate columns of G; a rank-deficient G
(reported with its condition number); fewer test functions than terms; negative noise ratio; a non-bool
per_time noise flag;
a non-bool sharded flag; non-trajectory input; coefficients of the wrong length.
"""
from __future__ import annotations

import pytest
import torch

from torchmf import wsindy
from torchmf.grid import Grid
from torchmf.particles import Trajectories
from torchmf.wsindy.mstls import RankDeficientError


def _data(length=31, n=400, dim=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(1, 1, n, dim, generator=generator, dtype=torch.float64)
    times = torch.linspace(0, 1, length, dtype=torch.float64)
    positions = start * (1 + times).reshape(1, -1, 1, 1)  # a spreading cloud
    return Trajectories(positions, times)


def test_nan_in_data_is_reported():
    data = _data()
    positions = data.positions.clone()
    positions[0, 3, 7, 0] = float("nan")
    with pytest.raises(ValueError, match="trajectories: the data contain 1 NaN/inf"):
        wsindy.identify(positions, times=data.times)


def test_data_outside_the_grid_is_reported():
    with pytest.raises(ValueError, match="trajectories: .* outside the grid's domain"):
        wsindy.identify(_data(), grid=Grid(-1, 1, 64))


def test_sharded_flag_must_be_a_bool():
    with pytest.raises(TypeError, match="sharded: expected a bool"):
        wsindy.identify(_data(), sharded="yes")


def test_too_few_time_points():
    with pytest.raises(ValueError, match="times: too few time points"):
        wsindy.identify(_data(length=5))
    with pytest.raises(ValueError, match="times: too few time points"):
        wsindy.identify(_data(length=21), test_functions={"m_t": 12})


def test_non_uniform_times_and_missing_times():
    data = _data()
    times = data.times.clone()
    times[5] += 0.01
    with pytest.raises(ValueError, match="times: expected uniformly spaced"):
        wsindy.identify(data.positions, times=times)
    with pytest.raises(ValueError, match="times: pass the recording times"):
        wsindy.identify(data.positions)
    with pytest.raises(TypeError, match="trajectories: expected"):
        wsindy.identify([1, 2, 3])


def test_library_errors_name_the_library():
    with pytest.raises(ValueError, match="library: preset 'keller_segel_2d' is for d = 2"):
        wsindy.identify(_data(), "keller_segel_2d")
    with pytest.raises(ValueError, match="library: expected a preset"):
        wsindy.identify(_data(), "no_such_preset")
    with pytest.raises(ValueError, match="library: duplicate terms"):
        wsindy.load_library({"interaction": [{"type": "power", "exponent": 2}, {"type": "power", "exponent": 2}]}, 1)
    with pytest.raises(ValueError, match="library: the library is empty|library: expected at least one term"):
        wsindy.load_library({"interaction": []}, 1)
    with pytest.raises(ValueError, match="test_functions: unknown keys"):
        wsindy.identify(_data(), test_functions={"m": 3})


def test_all_zero_column_is_reported():
    # the potential V = x^0 is constant, so its gradient and its column of G vanish identically
    spec = {"interaction": [{"type": "power", "exponent": 2}], "local": [{"type": "monomial", "powers": [0]}]}
    with pytest.raises(ValueError, match=r"library: all-zero columns of G for terms \['dV/dx1:x\^0'\]"):
        wsindy.identify(_data(), spec)


def test_duplicate_columns_are_reported():
    # the diffusion terms cos(0 x) and x^0 are the same function, so their columns coincide
    spec = {"interaction": [{"type": "power", "exponent": 2}],
            "diffusion": [{"type": "monomial", "powers": [0]}, {"type": "cosine", "frequencies": [0]}]}
    with pytest.raises(ValueError, match="library: duplicate columns of G for terms 'D:x\\^0' and 'D:cos\\(0x1\\)'"):
        wsindy.identify(_data(), spec)


def test_rank_deficient_system_reports_condition_number():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 60, generator=generator, dtype=torch.float64)
    from torchmf.wsindy.mstls import check_columns
    with pytest.raises(RankDeficientError, match="G: rank deficient, condition number"):
        check_columns(torch.stack([a, b, a + 0.5 * b], 1), ["a", "b", "c"])
    with pytest.raises(RankDeficientError, match="test functions for 3 library terms"):
        check_columns(torch.randn(2, 3, dtype=torch.float64), ["a", "b", "c"])


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="ratio: expected a non-negative number"):
        wsindy.add_measurement_noise(_data(), -0.1)
    with pytest.raises(TypeError, match="per_time: expected a bool"):
        wsindy.add_measurement_noise(_data(), 0.1, per_time="yes")
    lib = wsindy.load_library("qanr_1d", 1)
    with pytest.raises(ValueError, match="coefficients: expected 24 entries"):
        wsindy.WSINDyModel(lib, torch.zeros(3))
    with pytest.raises(ValueError, match="convolution: expected one of"):
        wsindy.identify(_data(), convolution="direct")
