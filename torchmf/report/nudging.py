"""Report section: multiscale nudging on the linear benchmark (biased vs nudged density, W2 vs time).

Built-in defaults: ``ou_linear`` reference a = 1, biased a = 5, N = 3000 (quick 1000), reference
snapshots every 0.05 (linear in time), h = 0.2, lambda in {10, 100}, grid backend, seed 0.
"""
from __future__ import annotations

from pathlib import Path

import torch

TITLE = "Multiscale nudging: a biased linear model corrected by density observations"
ORDER = 20


def run(out: Path, quick: bool = False, progress: bool = True) -> dict:
    from .. import systems
    from ..grid import Grid
    from ..metrics import smoothed_density, w2
    from ..nudging import NudgedSDE, ParticleObservations
    from ..plots import density_panels, line_plot

    n, bandwidth, strengths = (1000 if quick else 3000), 0.2, (10.0, 100.0)
    reference = systems.get("ou_linear", a=1.0).simulate(n_particles=n, seed=0, progress=progress)
    biased = systems.get("ou_linear", a=5.0)
    observations = ParticleObservations(reference, interpolation="linear")
    runs, errors = {}, {}
    for strength in (0.0,) + strengths:
        label = "biased (a = 5)" if strength == 0 else f"nudged, lambda = {strength:g}"
        model = NudgedSDE(biased.sde, observations, bandwidth, strength)
        runs[label] = model.simulate(reference.positions[:, 0], reference.times, 0.01, seed=1, progress=progress)
        errors[label] = w2(runs[label].positions[0], reference.positions[0])
    times = reference.times
    figures = [line_plot(out / "nudging_w2.png", times, errors, "t", "W2 to the reference",
                         "ou_linear: reference a = 1, biased a = 5", logy=True).name]
    grid = Grid(-2.5, 4.5, 200)
    images = {"reference (a = 1)": reference}
    images.update({k: v for k, v in runs.items() if "10" not in k or "100" in k})
    panels = {label: torch.stack([smoothed_density(r.positions[0, i], grid, 0.1) for i in range(r.n_times)], 1)
              for label, r in images.items()}
    figures.append(density_panels(out / "nudging_density.png", panels, extent=(-2.5, 4.5, 0, float(times[-1])),
                                  title="density over (x, t)", xlabel="x", ylabel="t").name)
    metrics = {label: {"final_w2": float(e[-1]), "time_averaged_w2": float(e.mean())} for label, e in errors.items()}
    lines = [f"`NudgedSDE` on `ou_linear` (N = {n}, h = {bandwidth}, snapshots every 0.05, grid backend):"]
    lines += [f"- {label}: final W2 {m['final_w2']:.4f}, time-averaged {m['time_averaged_w2']:.4f}"
              for label, m in metrics.items()]
    return {"markdown": "\n".join(lines), "figures": figures, "metrics": metrics}
