"""Report section: the particle core (simulators against closed forms, grid vs pairwise force)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

TITLE = "Particle core: simulators and interaction backends"
ORDER = 10


def run(out: Path, quick: bool = False, progress: bool = True) -> dict:
    from .. import systems
    from ..interaction import InteractionForce
    from ..kernels import GaussianKernel
    from ..grid import Grid
    from ..metrics import relative_error
    from ..plots import line_plot, scatter_panels

    figures, metrics, text = [], {}, []
    # 1. OU variance against the closed form
    ou = systems.get("ou_linear")
    data = ou.simulate(n_particles=500 if quick else 4000, n_experiments=4, seed=0, progress=progress)
    variance = data.positions.var(dim=2).mean(dim=(0, 2))
    closed = ou.variance(data.times.double())
    error = float(relative_error(variance.double(), closed))
    metrics["ou_variance_relative_error"] = error
    figures.append(line_plot(out / "core_ou_variance.png", data.times, {"simulated (4 experiments)": variance,
                             "closed form": closed}, "t (model time units)", "Var X_t (model length units^2)",
                             "ou_linear: variance vs closed form").name)
    text.append(f"- `ou_linear`: empirical variance vs closed form, relative L2 error {error:.3f}.")

    # 2. reflected Brownian motion spreading to the uniform law
    box = systems.get("box_diffusion")
    boxes = box.simulate(n_particles=1000 if quick else 4000, times=[0.0, 20.0, 100.0, 400.0], seed=0,
                         progress=progress)
    clouds = {f"t = {float(t):g}": boxes.positions[0, i] for i, t in enumerate(boxes.times)}
    figures.append(scatter_panels(out / "core_box_diffusion.png", clouds, "box_diffusion (LOT paper Table 6.1)",
                                  limits=((0, 10), (0, 10))).name)
    final = boxes.positions[0, -1]
    metrics["box_final_mean"] = final.mean(0).tolist()
    metrics["box_final_variance"] = final.var(0).tolist()
    text.append(f"- `box_diffusion`: at t = 400 the variance per axis is {final.var(0).tolist()} "
                f"(uniform law on [0, 10]: 8.33).")

    # 3. grid vs pairwise force
    n = 5000 if quick else 20000
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(n, 2, generator=generator)
    kernel = GaussianKernel(0.5, dim=2)
    grid = Grid(-6, 6, 256, dim=2)
    start = time.perf_counter()
    exact = InteractionForce(kernel, "pairwise")(points)
    pairwise_seconds = time.perf_counter() - start
    gridded = InteractionForce(kernel, "grid", grid=grid)
    gridded(points)  # builds the kernel spectrum once
    start = time.perf_counter()
    approximate = gridded(points)
    grid_seconds = time.perf_counter() - start
    difference = float(relative_error(approximate, exact))
    metrics.update(force_particles=n, pairwise_seconds=pairwise_seconds, grid_seconds=grid_seconds,
                   grid_vs_pairwise_relative_l2=difference)
    order = points[:, 0].argsort()
    figures.append(line_plot(out / "core_force_backends.png", points[order, 0],
                             {"pairwise (exact)": exact[order, 0], "grid 256^2": approximate[order, 0]},
                             "x (model length units)", "force, x component (length / time units)",
                             f"Gaussian-kernel force, N = {n}", styles={
                                 "pairwise (exact)": ".", "grid 256^2": ","}).name)
    text.append(f"- Gaussian-kernel force, N = {n}: pairwise {pairwise_seconds:.3f} s, grid {grid_seconds:.4f} s "
                f"({pairwise_seconds / grid_seconds:.0f}x), relative L2 difference {difference:.1e}.")
    return {"markdown": "\n".join(text), "figures": figures, "metrics": metrics}
