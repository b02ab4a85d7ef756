"""Which backend a ``method`` means, and how much memory a tile of the online backend may use."""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from .._validation import check_int

__all__ = ["METHODS", "resolve_method", "exact_limits", "keops_available", "free_memory", "tile_rows", "check_tiling"]

METHODS = ("auto", "sort", "exact", "sinkhorn", "sinkhorn-geomloss", "sinkhorn-keops", "sinkhorn-online",
           "sinkhorn-dense", "sinkhorn-multiscale")
ALIASES = {"sinkhorn-dense": "sinkhorn-online"}
EXACT_LIMIT = 3000           # "auto" uses POT's network simplex up to this size (same rule as metrics.w2):
#                              it beat a converged Sinkhorn map at N = 2,000 (1.3 s vs 5.4 s)
EXACT_MAX = 10_000           # POT's network simplex: two N x N float64 arrays (1.6 GB) and about a minute here
SPARSE_EXACT_LIMIT = 30_000  # "auto" uses the certified sparse assignment (OR-Tools) up to this size:
#                              N = 1e4: 7-9 s against 5-17 s for a converged Sinkhorn map; N = 3e4: 53 s
#                              against 165 s (support checked) or about 90 s (not checked)
SPARSE_EXACT_MAX = 100_000   # sparse assignment: O(N k) memory, pairs pruned by block bounds; N = 1e5 certified
#                              in 188 s wall, 132 s CPU, 1.2 GB peak (one thread, loaded 2-core machine)
DENSE_SINKHORN_LIMIT = 4000  # CPU "sinkhorn" uses the dense online tiles up to this size, the sparse kernel beyond
_MEMORY_FRACTION = 0.25     # the online backend's tiles use at most this share of the free memory
_TILE_COPIES = 2            # live tile-sized buffers per row tile (scores, and a temporary of the matmul)
_CPU_TILE_ENTRIES = 2 ** 18  # CPU tiles stop here: a 1 MB tile stays in L2 through its five passes
#                              (2**22 entries ran 2.5x slower per soft-min at N = 1e4, measured)
_FALLBACK_MEMORY = 2 ** 31   # bytes assumed free on CPU when /proc/meminfo cannot be read


def exact_limits(weighted: bool = False):
    """``(auto limit, hard limit)`` on ``N`` for ``method="exact"``: uniform clouds of equal size with
    OR-Tools installed use the certified sparse assignment (``SPARSE_EXACT_LIMIT``,
    ``SPARSE_EXACT_MAX``); weighted or unequal clouds, or no OR-Tools, POT's dense network simplex
    (``EXACT_LIMIT``, ``EXACT_MAX``)."""
    from .sparse_assignment import ortools_available

    if not weighted and ortools_available():
        return SPARSE_EXACT_LIMIT, SPARSE_EXACT_MAX
    return EXACT_LIMIT, EXACT_MAX


def resolve_method(method: str, n: int, dim: int, device=None, element_size: int = 4, tiling=(None, None),
                   weighted: bool = False) -> str:
    """The concrete backend that ``method`` means for ``n`` particles in dimension ``dim`` on ``device``
    (``weighted``: the clouds carry weights or differ in size).

    ``"auto"``: sorting in 1-D; the exact assignment up to the limit of :func:`exact_limits`
    (30,000 for uniform clouds of equal size, 3,000 otherwise); ``"sinkhorn"`` beyond.

    ``"sinkhorn"``: the converged torch solvers only (geomloss' loop does one update per annealing
    level and is not converged; ask for ``"sinkhorn-geomloss"`` explicitly):

    - CPU, ``d <= 3``, ``n > DENSE_SINKHORN_LIMIT``: the multiscale (sparse-kernel) backend: a
      soft-min costs ``O(n k)`` for ``k`` pairs per row against ``O(n^2)`` for the dense tiles, and a
      converged solve needs hundreds of them when the blur is near the particle spacing. Up to that
      size, or ``d > 3``: the online backend (dense tiles, no truncation: at N = 2,000 it was as
      fast or faster on 5 of 6 families, and right on a held-out pair where the sparse support
      converged 1.28x away).
    - CUDA: the online backend (torch-native tiles; pykeops is never chosen here).
    """
    method = ALIASES.get(method, method)
    if method == "auto":
        if dim == 1:
            return "sort"
        method = "exact" if n <= exact_limits(weighted)[0] else "sinkhorn"
    if method == "sinkhorn":
        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type == "cpu" and dim <= 3 and n > DENSE_SINKHORN_LIMIT:
            return "sinkhorn-multiscale"
        return "sinkhorn-online"
    if method == "sort" and dim != 1:
        raise ValueError(f"method: 'sort' is exact only in 1-D, but the clouds have d = {dim}")
    if method == "exact" and n > exact_limits(weighted)[1]:
        kind = "weighted or unequal clouds (dense network simplex)" if weighted else "these clouds"
        raise ValueError(f"method: 'exact' is limited to N <= {exact_limits(weighted)[1]} for {kind}, "
                         f"but got N = {n}; use 'sinkhorn'")
    if method == "sinkhorn-keops" and not keops_available():
        raise ValueError("method: 'sinkhorn-keops' needs pykeops, which is not installed; use 'sinkhorn'")
    if method == "sinkhorn-multiscale" and dim > 3:
        raise ValueError(f"method: 'sinkhorn-multiscale' clusters on a grid and needs d <= 3, but got d = {dim}")
    return method


def keops_available() -> bool:
    """Whether pykeops could be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("pykeops") is not None
    except ValueError:  # sys.modules["pykeops"] = None (made unimportable on purpose)
        return False


def free_memory(device) -> int:
    """Bytes free on ``device``: on CUDA ``torch.cuda.mem_get_info`` plus what torch's caching
    allocator holds unused (reserved - allocated: earlier tiles, reusable, so the tile size does not
    shrink from one solve to the next); on CPU ``MemAvailable`` of /proc/meminfo, or a conservative
    2 GiB where that cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_MEMORY


def tile_rows(n_rows: int, n_columns: int, element_size: int, device, tile_entries: Optional[int] = None,
              memory_budget: Optional[int] = None) -> int:
    """Rows of one tile of the online log-sum-exp (each row spans all ``n_columns``).

    With ``tile_entries`` the tile holds at most that many cost entries; otherwise it uses at most
    ``memory_budget`` bytes (default: 1/4 of :func:`free_memory`) for its ``2`` live buffers;
    CPU tiles are also capped at ``2**18`` entries (cache-sized; larger ones run slower). A budget too
    small for a single row is a ``ValueError`` naming both figures, never an out-of-memory hang.
    """
    if tile_entries is not None:
        if tile_entries < n_columns:
            raise ValueError(f"tile_entries: one row tile needs {n_columns} entries (one per target point), "
                             f"but got tile_entries = {tile_entries}")
        return max(1, min(n_rows, tile_entries // n_columns))
    device = torch.device(device)
    budget = memory_budget if memory_budget is not None else int(_MEMORY_FRACTION * free_memory(device))
    row_bytes = n_columns * element_size * _TILE_COPIES
    if row_bytes > budget:
        source = "memory_budget" if memory_budget is not None else f"1/4 of the free memory on {device}"
        raise ValueError(f"memory_budget: one row tile of the online Sinkhorn needs {row_bytes:,} bytes "
                         f"({n_columns:,} columns x {element_size} bytes x {_TILE_COPIES} buffers), but the budget "
                         f"({source}) is {budget:,} bytes")
    rows = budget // row_bytes
    if device.type == "cpu":
        rows = min(rows, max(1, _CPU_TILE_ENTRIES // n_columns))
    return int(max(1, min(n_rows, rows)))


def check_tiling(tile_entries, memory_budget):
    if tile_entries is not None:
        tile_entries = check_int("tile_entries", tile_entries, minimum=1)
    if memory_budget is not None:
        memory_budget = check_int("memory_budget", memory_budget, minimum=1)
    return tile_entries, memory_budget
