"""Report section: scale (the online Sinkhorn without KeOps, its memory tiles, sharded ensembles)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

TITLE = "Scale: online Sinkhorn without KeOps, sharded particle ensembles"
ORDER = 60


def _shard_worker(rank, world, init_file, out_dir, n):
    """One gloo rank: its share of the particles, the sharded grid force, the traffic it sent."""
    import torch.distributed as dist

    from .. import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = _particles(n)[distributed.shard_slice(n)]
        distributed.reset_traffic()
        force = _periodic_force(True)(local)
        torch.save({"force": force, "bytes": torch.tensor(distributed.traffic()["all_reduce_bytes"])},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _particles(n):
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 4


def _periodic_force(sharded):
    from ..grid import Grid
    from ..interaction import InteractionForce
    from ..kernels import GaussianKernel, PeriodicKernel

    kernel = PeriodicKernel(GaussianKernel(0.3, 2), 4.0)
    return InteractionForce(kernel, "grid", grid=Grid(0, 4, 128, periodic=True, dim=2), sharded=sharded)


def run(out: Path, quick: bool = False, progress: bool = True) -> dict:
    import torch.multiprocessing as mp
    from geomloss import SamplesLoss

    from ..plots import scatter_panels
    from ..transport import TransportSolver, affine_gaussian_case, resolve_method, sinkhorn_potentials, tile_rows

    figures, metrics, text = [], {}, []
    # 1. the online solver against geomloss' tensorized one (float64, debiased potentials)
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(400, 2, generator=generator, dtype=torch.float64)
    b = 0.7 * torch.randn(300, 2, generator=generator, dtype=torch.float64) + 1
    f_ref, g_ref = SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.7, potentials=True, backend="tensorized")(a, b)
    f, g = sinkhorn_potentials(a, b, blur=0.1, scaling=0.7, tile_entries=7 * 400).debiased()
    gap = max(float((f - f_ref).abs().max()), float((g - g_ref).abs().max()))
    metrics["online_vs_geomloss_potentials_max_abs"] = gap
    text.append(f"- Online Sinkhorn (tiles of 7 rows) vs geomloss' tensorized solver, debiased potentials, "
                f"400 x 300 points in float64: largest difference {gap:.1e}.")

    # 2. the 2-D affine case: the exact map is known
    n = 1000 if quick else 2000
    x, y, exact = affine_gaussian_case(n)
    # trivial baseline (issue 14): translate by the difference of the means
    shift_error = float((x + (y.mean(0) - x.mean(0)) - exact).norm() / (exact - x).norm())
    metrics["affine_translation_baseline_relative_error"] = shift_error
    text.append(f"- 2-D affine case, N = {n}, the trivial map (translation by the difference of the means): "
                f"displacement {100 * shift_error:.1f}% from the exact map.")
    for method in ("sinkhorn-online", "sinkhorn"):
        solver = TransportSolver(method)
        start = time.perf_counter()
        mapped = solver(x, y)
        seconds = time.perf_counter() - start
        error = float((mapped - exact).norm() / (exact - x).norm())
        backend = resolve_method(method, n, 2)
        metrics[f"affine_{method}"] = {"n": n, "backend": backend, "seconds": seconds, "relative_error": error}
        text.append(f"- 2-D affine case, N = {n}, `method={method!r}` ({backend}): {seconds:.2f} s, displacement "
                    f"{100 * error:.2f}% from the exact map.")
        if method == "sinkhorn-online":
            figures.append(scatter_panels(out / "scale_online_sinkhorn.png",
                                          {"source x": x, "target (shuffled)": y, "online Sinkhorn T(x)": mapped,
                                           "exact T(x)": exact}, f"online Sinkhorn map, N = {n}").name)

    # 3. memory tiles: what one row costs at N = 1e6, and the error when it cannot fit
    rows = tile_rows(1_000_000, 1_000_000, 4, "cpu")
    metrics["tile_rows_at_1e6_cpu"] = rows
    try:
        tile_rows(10, 1_000_000, 4, "cpu", memory_budget=1_000_000)
        message = "(no error)"
    except ValueError as error:
        message = str(error)
    text.append(f"- Tiles at N = M = 1e6 in float32 on this CPU: {rows} rows per tile (8 MB per row). "
                f"A 1 MB budget: `{message}`")

    # 4. sharded ensemble: 2 gloo processes vs one
    n = 20_000 if quick else 50_000
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_shard_worker, args=(2, str(Path(folder) / "init"), folder, n), nprocs=2, join=True,
                           start_method="spawn")
        parts = [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    sharded = torch.cat([part["force"] for part in parts])
    single = _periodic_force(False)(_particles(n))
    difference = float((sharded - single).norm() / single.norm())
    share = n // 2  # baseline: a rank that forgets the all-reduce (the force of its own half only)
    alone = float((_periodic_force(False)(_particles(n)[:share]) - single[:share]).norm() / single[:share].norm())
    sent = int(parts[0]["bytes"])
    metrics.update(sharded_particles=n, sharded_vs_single_relative_l2=difference, all_reduce_bytes_per_rank=sent,
                   own_share_only_relative_l2=alone)
    text.append(f"- Grid force sharded over 2 gloo processes, N = {n:,}, periodic 128^2 grid: relative L2 "
                f"difference from one process {difference:.1e} (a rank using only its own half: {alone:.2f}); "
                f"each rank sent {sent:,} bytes (one 128^2 float32 grid, independent of N).")
    return {"markdown": "\n".join(text), "figures": figures, "metrics": metrics}
