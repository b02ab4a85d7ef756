"""The multiscale backend keeps the pairs the plan needs where its clusters are solved at the final eps.

Mixture to ring (the map tears between the three blobs), N = 3,000, blur 10% of the spread: the
clusters are finer than the blur, so the particles only run the final level. With the support
check switched off, the fine kernel must already hold the right pairs: from the clusters' plan.
The reference is the dense (untruncated) online backend converged to 1e-4."""
import pytest
import torch

import torchmf.transport.multiscale as multiscale
from torchmf.transport import TransportSolver, default_blur, transport_case


@pytest.fixture(scope="module")
def case():
    x, y = transport_case("mixture_to_ring", 3000, seed=5)
    blur = 2 * default_blur(x, y)
    reference = TransportSolver("sinkhorn-online", blur=blur, debias=False, tolerance=1e-4,
                                max_iterations=20_000)(x, y)
    return x, y, blur, reference


def _error(case, monkeypatch):
    # the plan here spreads over more than 10% of all pairs, where the solver would take the dense
    # tiles: kept sparse, as it is for larger N at this blur
    monkeypatch.setattr(multiscale, "_DENSE_SHARE", 1.0)
    x, y, blur, reference = case
    mapped = TransportSolver("sinkhorn-multiscale", blur=blur, debias=False)(x, y)
    return float((mapped - reference).norm() / (reference - x).norm())


def test_clusters_plan_support_keeps_the_torn_branches(case, monkeypatch):
    monkeypatch.setattr(multiscale, "SUPPORT_CHECK_PAIRS", 0)
    assert _error(case, monkeypatch) <= 0.015  # measured 0.0085 (the stopping tolerance's share)


def test_without_the_clusters_plan_support_the_map_is_off(case, monkeypatch):
    """The baseline the line above must beat: only the pairs near each predicted target (0.033)."""
    monkeypatch.setattr(multiscale, "SUPPORT_CHECK_PAIRS", 0)
    empty = torch.empty(0, dtype=torch.long)
    monkeypatch.setattr(multiscale, "_member_pairs", lambda *args: (empty, empty))
    assert _error(case, monkeypatch) >= 0.025


def test_the_support_check_repairs_a_missing_branch(case, monkeypatch):
    """With the check on (the default up to N = 10,000) even the narrow kernel comes out right."""
    empty = torch.empty(0, dtype=torch.long)
    monkeypatch.setattr(multiscale, "_member_pairs", lambda *args: (empty, empty))
    assert _error(case, monkeypatch) <= 0.015


def test_a_spread_plan_runs_on_the_dense_tiles_with_the_same_map(monkeypatch):
    """Far apart clouds: the default blur follows the gap, every cluster pair carries plan, and the
    sparse kernel would hold most pairs; the fine stage takes the dense tiles instead (no truncated
    kernel is built) and gives the dense backend's map."""
    x, y = transport_case("far_apart", 1500, seed=2)

    def no_truncated_kernel(*args, **kwargs):
        raise AssertionError("a truncated kernel was built for a plan spread over most pairs")

    monkeypatch.setattr(multiscale, "truncated_kernel", no_truncated_kernel)
    # the blur of the union's spread (the default before issue 26, which now follows each cloud's own spread)
    # makes the plan spread over most pairs: the case this test is about
    blur = 0.05 * float(torch.cat([x, y]).std(0).max())
    mapped = TransportSolver("sinkhorn-multiscale", debias=False, tolerance=1e-4, blur=blur)(x, y)
    dense = TransportSolver("sinkhorn-online", debias=False, tolerance=1e-4, blur=blur)(x, y)
    assert float((mapped - dense).norm() / (dense - x).norm()) < 1e-4
