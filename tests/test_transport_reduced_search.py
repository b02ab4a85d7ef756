"""The block-bound search of the smallest reduced costs against the full N x M matrix (brute force)."""
import numpy as np
import pytest
import torch

from torchmf.transport import reduced_search
from torchmf.transport.atoms import normalised
from torchmf.transport.cases import transport_case
from torchmf.transport.reduced_search import smallest_reduced
from torchmf.transport.sparse_assignment import _certified


def _brute(x, y, f, g, count, below=None):
    """``{row: sorted values}`` of the ``count`` smallest reduced costs of every row, from all pairs."""
    tile = (x[:, None, :] - y[None, :, :]).pow(2).sum(2) - f[:, None] - g[None, :]
    values = tile.topk(min(count, y.shape[0]), dim=1, largest=False).values
    return {i: row[row < below] if below is not None else row for i, row in enumerate(values)}


def _found(rows, values, n):
    return {i: values[rows == i].sort().values for i in range(n)}


def _assert_same(found, expected):
    for i, want in expected.items():
        got = found[i]
        assert got.numel() == want.numel(), f"row {i}: {got.numel()} values, expected {want.numel()}"
        if want.numel():
            assert torch.allclose(got, want.sort().values, rtol=0, atol=1e-12), f"row {i}"


def _clouds(name, n, m, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    y = 0.5 * torch.rand(m, dim, generator=generator, dtype=torch.float64) + 2.0
    if name == "noise":  # potentials with no structure: the bounds are loose, the answer must stay exact
        f = torch.randn(n, generator=generator, dtype=torch.float64)
        g = torch.randn(m, generator=generator, dtype=torch.float64)
    else:  # c-transform-like potentials of a shift: large gradients, small reduced costs near the map
        f = -2.0 * x.sum(1) + 0.01 * torch.randn(n, generator=generator, dtype=torch.float64)
        g = y.pow(2).sum(1) - 0.5 * y.sum(1)
    return x, y, f, g


@pytest.mark.parametrize("name, n, m, dim", [("noise", 700, 500, 2), ("shift", 900, 1300, 2),
                                             ("shift", 600, 600, 3), ("noise", 400, 37, 1)])
@pytest.mark.parametrize("count", [1, 7])
def test_smallest_reduced_equals_the_full_matrix(name, n, m, dim, count):
    x, y, f, g = _clouds(name, n, m, dim, seed=count)
    rows, cols, values = smallest_reduced(x, y, f, g, count)
    assert torch.equal(rows, rows.sort().values) and rows.bincount(minlength=n).eq(min(count, m)).all()
    direct = (x[rows] - y[cols]).pow(2).sum(1) - f[rows] - g[cols]
    assert torch.allclose(values, direct, rtol=0, atol=1e-12)  # the values belong to the pairs returned
    _assert_same(_found(rows, values, n), _brute(x, y, f, g, count))


def test_pairs_below_a_cut_under_certified_potentials_and_few_pairs_formed(monkeypatch):
    """Perturbed optimal potentials of a 2,000-point assignment: the pairs below a cut, exactly as the
    full matrix has them, while the search formed a small share of the N^2 pairs."""
    x, y = transport_case("square_to_banana", 2000, seed=5)
    source, target, _, _ = normalised(x, y)
    _, _, f, g, _ = _certified(source, target)
    f = f + 1e-3 * torch.randn(f.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    formed = []
    original = reduced_search._tile

    def counting(*args):
        tile = original(*args)
        formed.append(tile.numel())
        return tile

    monkeypatch.setattr(reduced_search, "_tile", counting)
    cut = -2e-4
    rows, cols, values = smallest_reduced(source, target, f, g, 5, below=cut)
    expected = _brute(source, target, f, g, 5, below=cut)
    assert sum(v.numel() for v in expected.values()) > 100  # the cut leaves pairs to find
    _assert_same(_found(rows, values, source.shape[0]), expected)
    # 24% here at BLOCK = 16 (the share falls with N: 1.7% at N = 3e4)
    assert sum(formed) < 0.3 * source.shape[0] ** 2, f"formed {sum(formed)} of {source.shape[0] ** 2} pairs"


def test_a_cut_below_every_pair_finds_nothing():
    x, y, f, g = _clouds("shift", 300, 300, 2, seed=3)
    least = float(((x[:, None] - y[None]).pow(2).sum(2) - f[:, None] - g[None]).min())
    rows, cols, values = smallest_reduced(x, y, f, g, 4, below=least)
    assert rows.numel() == cols.numel() == values.numel() == 0
    rows, _, values = smallest_reduced(x, y, f, g, 4, below=np.nextafter(least, np.inf))
    assert rows.numel() == 1 and float(values[0]) == least


def test_smallest_reduced_names_its_bad_arguments():
    x, y = torch.rand(10, 2, dtype=torch.float64), torch.rand(12, 2, dtype=torch.float64)
    f, g = torch.zeros(10, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    with pytest.raises(ValueError, match="count"):
        smallest_reduced(x, y, f, g, 0)
    with pytest.raises(ValueError, match="^y: expected points of dimension 2"):
        smallest_reduced(x, torch.rand(12, 3, dtype=torch.float64), f, g, 2)
    with pytest.raises(ValueError, match="^g: expected a tensor of shape \\(12,\\)"):
        smallest_reduced(x, y, f, g[:5], 2)
    with pytest.raises(ValueError, match="^x: expected a non-empty tensor"):
        smallest_reduced(x[0], y, f, g, 2)
