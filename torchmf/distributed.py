r"""Sharding particle ensembles over ``torch.distributed`` ranks.

Each of ``P`` processes holds ``N/P`` particles of every experiment. Mean-field quantities are
reduced so that the result does not depend on ``P``:

- grid quantities (the interaction force on a grid, the nudging velocity, the WSINDy
  histogram) all-reduce only the deposited density grid: ``O(G^d)`` bytes per step, independent
  of ``N``;
- the quadratic (Curie-Weiss) coupling all-reduces the ensemble's first moment: ``O(d)`` bytes;
- the exact pairwise force gathers all sources: ``O(N d)`` bytes (use the grid at scale).

Launch with ``torchrun --standalone --nproc-per-node P ...``; :func:`setup` reads the usual
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and picks gloo on CPU, NCCL on CUDA.
Every collective here is called by all ranks in the same order; :func:`check_same` turns a
configuration mismatch between ranks (grid, system, sizes) into a ``ValueError`` on every rank
instead of a hang. See docs/scaling.md for the communication and memory model.
"""
from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["check_device", "setup", "teardown", "is_sharded", "rank_and_size", "shard_slice", "all_reduce_sum", "global_count",
           "gather_sources", "gather_to_root", "check_same", "raise_together", "traffic", "reset_traffic"]

# payload bytes this process handed to collectives (for the scaling benchmark and docs/scaling.md)
_TRAFFIC = {"all_reduce_bytes": 0, "all_reduce_calls": 0, "all_gather_bytes": 0}


def traffic() -> dict:
    """Payload bytes and calls this process has passed to collectives since :func:`reset_traffic`."""
    return dict(_TRAFFIC)


def reset_traffic() -> None:
    for key in _TRAFFIC:
        _TRAFFIC[key] = 0


def is_sharded() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``; a ``ValueError`` naming ``name`` for an unknown device or
    for CUDA where there is none (or fewer devices than the index asks for)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', but got {device!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: CUDA was asked for ({device}), but torch.cuda.is_available() is False "
                             f"on this machine (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device} was asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return device


def setup(device=None, timeout_seconds: float = 300.0) -> Tuple[int, int]:
    """Initialize the default process group from torchrun's environment, if there is one.

    Returns ``(rank, world_size)``; ``(0, 1)`` outside torchrun. The backend is NCCL when
    ``device`` is CUDA, gloo otherwise. Asking for CUDA where there is none is a ``ValueError``.
    """
    device = check_device(device) if device is not None else torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return rank_and_size()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
    return rank_and_size()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_slice(n: int, rank: Optional[int] = None, size: Optional[int] = None) -> slice:
    """This rank's contiguous share of ``n`` items (the first ``n % P`` ranks get one more)."""
    current_rank, current_size = rank_and_size()
    rank = current_rank if rank is None else rank
    size = current_size if size is None else size
    if n < size:
        raise ValueError(f"n: expected at least one particle per process ({size} processes), but got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op when not sharded); returns it."""
    if is_sharded():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        _TRAFFIC["all_reduce_bytes"] += tensor.numel() * tensor.element_size()
        _TRAFFIC["all_reduce_calls"] += 1
    return tensor


def global_count(local: int, device=None) -> int:
    """Total number of particles over ranks (one tiny all-reduce)."""
    if not is_sharded():
        return local
    count = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    return int(count.item())


def gather_sources(y: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Concatenate every rank's ``y`` along ``dim`` (ranks may hold different counts)."""
    if not is_sharded():
        return y
    dim = dim % y.ndim
    counts = [torch.zeros(1, dtype=torch.int64, device=y.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([y.shape[dim]], dtype=torch.int64, device=y.device))
    counts = [int(c.item()) for c in counts]
    padded_shape = list(y.shape)
    padded_shape[dim] = max(counts)
    padded = y.new_zeros(padded_shape)
    padded.narrow(dim, 0, y.shape[dim]).copy_(y)
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    _TRAFFIC["all_gather_bytes"] += padded.numel() * padded.element_size()
    return torch.cat([piece.narrow(dim, 0, count) for piece, count in zip(pieces, counts)], dim=dim)


def gather_to_root(tensor: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """Rank 0 receives every rank's ``tensor`` concatenated along ``dim``; others get None."""
    if not is_sharded():
        return tensor
    gathered = gather_sources(tensor.contiguous(), dim)
    return gathered if dist.get_rank() == 0 else None


def check_same(name: str, value) -> None:
    """Raise ``ValueError`` on every rank if ranks disagree on ``value`` (compared by ``repr``)."""
    if not is_sharded():
        return
    digest = hashlib.sha256(repr(value).encode()).hexdigest()[:16]
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        mismatched = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise ValueError(f"{name}: processes disagree (ranks {mismatched} differ from rank 0); "
                         "every rank must use the same settings")


def raise_together(error: Optional[BaseException]) -> None:
    """Re-raise a local validation ``error`` on every rank.

    A rank that raised on its own share of the data (NaN, a particle outside the grid) would leave
    the others waiting in the next collective until the timeout; calling this on every rank after
    the checks turns the failure into a ``ValueError`` on all of them. Without a process group it
    simply raises ``error`` (when not None).
    """
    if not is_sharded():
        if error is not None:
            raise error
        return
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise ValueError(f"rank {rank} rejected its share of the data ({message})")
