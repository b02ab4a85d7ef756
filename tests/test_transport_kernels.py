"""The sparse (truncated) kernel against the dense one on the same pairs, and its padded layout."""
import math

import pytest
import torch

from torchmf.transport.kernels import DenseKernel, SparseKernel


def _clouds(seed, n=40, m=30):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, dtype=torch.float64, generator=generator),
            torch.rand(m, 2, dtype=torch.float64, generator=generator) * 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_kernel_on_all_pairs_equals_dense(seed):
    x, y = _clouds(seed)
    rows, cols = torch.cartesian_prod(torch.arange(40), torch.arange(30)).T
    keep = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))  # order must not matter
    sparse, dense = SparseKernel(x, y, rows[keep], cols[keep]), DenseKernel(x, y)
    h = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 7))
    for eps in (1.0, 0.01):
        torch.testing.assert_close(sparse.softmin(eps, h), dense.softmin(eps, h), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sparse.barycentre(eps, h, y), dense.barycentre(eps, h, y), rtol=1e-10, atol=1e-12)
    g = torch.randn(40, dtype=torch.float64)
    torch.testing.assert_close(sparse.transpose().softmin(0.1, g), dense.transpose().softmin(0.1, g))


def test_sparse_kernel_with_uneven_rows_matches_a_direct_sum():
    """Rows of 0, 1 and up to 30 pairs (several padded blocks): each soft-min is its own log-sum-exp."""
    x, y = _clouds(3)
    generator = torch.Generator().manual_seed(4)
    pairs = [(i, j) for i in range(40) for j in range(30) if torch.rand(1, generator=generator) < i / 40]
    rows, cols = torch.tensor(pairs).T
    kernel = SparseKernel(x, y, rows, cols)
    assert len(kernel._layout()) > 3  # the row counts span several buckets
    h = torch.randn(30, dtype=torch.float64, generator=generator)
    eps = 0.05
    result = kernel.softmin(eps, h)
    for i in range(40):
        partners = cols[rows == i]
        if partners.numel() == 0:
            assert result[i] == math.inf
            continue
        cost = 0.5 * (x[i] - y[partners]).pow(2).sum(1)
        expected = -eps * torch.logsumexp(h[partners] - cost / eps, 0)
        torch.testing.assert_close(result[i], expected, rtol=1e-12, atol=1e-12)
