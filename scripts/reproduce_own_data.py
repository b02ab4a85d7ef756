"""Acceptance of issue 15 on users' own files: tracks with lost entries, images in numpy axis order.

Examples:
    python scripts/reproduce_own_data.py --out runs/
    python scripts/reproduce_own_data.py --quick --out runs/

Checks:

1. ``torchmf identify`` on a long-format CSV of 3,000 tracked cells over 51 frames of the 2-D local
   model (``local_2d``, WSINDy paper 5.1; its library, automatic test functions: the paper's Table 5
   supports assume 101 frames and select spurious terms at 51 even on complete data) with 5% of the
   (cell, frame) entries lost recovers the same terms as on the complete CSV, coefficients within 5%.
   Baseline: the workaround without masks, keeping only the cells tracked in every frame.
2. ``GridObservations`` on 64 x 64 images in numpy axis order ``(rows = y, columns = x)`` with the
   defaults gives the same nudged forecast as the transposed images with ``indexing="ij"`` (final W2
   to the reference within 5%). Baseline: the numpy images read as ``(x, y)`` (the old default).
3. An image stack whose mass is far from 1 warns (baseline: a normalized stack, which must not warn).
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report, standard_parser  # noqa: E402

from torchmf import systems  # noqa: E402
from torchmf.cli import main as torchmf  # noqa: E402
from torchmf.metrics import w2  # noqa: E402
from torchmf.nudging import GridObservations, NudgedSDE  # noqa: E402
from torchmf.sde import McKeanVlasovSDE  # noqa: E402


def write_tracks(path: Path, positions: np.ndarray, keep: np.ndarray) -> Path:
    """``particle,frame,x,y`` rows of ``positions (L, N, 2)`` where ``keep (L, N)``."""
    frame, cell = np.nonzero(keep)
    table = np.column_stack([cell, frame, positions[frame, cell]])
    np.savetxt(path, table, delimiter=",", header="particle,frame,x,y", comments="", fmt=["%d", "%d", "%.9g", "%.9g"])
    return path


def identified(path: Path, frame_dt: float, out: Path) -> dict:
    assert torchmf(["identify", str(path), "--library", "local_2d",
                    "--frame-dt", repr(frame_dt), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def compare(model: dict, reference: dict) -> float:
    """Largest relative coefficient difference over the reference's selected terms (inf if the terms differ)."""
    if set(model["selected"]) != set(reference["selected"]):
        return float("inf")
    return max(abs(model["selected"][k] - v) / abs(v) for k, v in reference["selected"].items())


def check_identify(report: Report, quick: bool, folder: Path) -> None:
    cells = 1000 if quick else 3000
    data = systems.get("local_2d").simulate(n_particles=cells, t_end=2.0, record_dt=0.04, seed=0, progress=False,
                                            dtype=torch.float64)
    positions = data.positions[0].numpy()
    keep = np.random.default_rng(1).random(positions.shape[:2]) > 0.05
    frame_dt = float(data.times[1] - data.times[0])
    complete = identified(write_tracks(folder / "complete.csv", positions, np.ones_like(keep)), frame_dt,
                          folder / "complete.json")
    lost = identified(write_tracks(folder / "lost.csv", positions, keep), frame_dt, folder / "lost.json")
    tracked = keep.all(0)
    survivors = identified(write_tracks(folder / "survivors.csv", positions[:, tracked], keep[:, tracked]), frame_dt,
                           folder / "survivors.json")
    report.metrics.update(cells=cells, frames=int(positions.shape[0]), lost_fraction=float(1 - keep.mean()),
                          complete_tracks=int(tracked.sum()), complete_terms=complete["selected"],
                          lost_terms=lost["selected"], survivors_terms=survivors["selected"])
    report.check("identify on CSV with 5% lost entries: max relative coefficient difference to the complete data",
                 compare(lost, complete), "same terms, <= 0.05", lambda v: v <= 0.05,
                 baseline=(f"only the {int(tracked.sum())} cells tracked in every frame", compare(survivors, complete)))


def check_images(report: Report, quick: bool) -> None:
    rng = np.random.default_rng(0)
    particles, bandwidth, pixels = (400 if quick else 1000), 0.3, 64
    x = rng.normal(size=(particles, 2)) * 0.5
    frames = [x]
    for step in range(100):
        x = x - (x - [1.2, -0.6]) * 0.01 + 0.5 * np.sqrt(0.01) * rng.normal(size=x.shape)
        if (step + 1) % 10 == 0:
            frames.append(x)
    reference = np.stack(frames)
    centres = np.linspace(-3, 3, pixels + 1)[:-1] + 3 / pixels
    gx = np.exp(-(centres[None, None] - reference[..., :1]) ** 2 / (2 * bandwidth ** 2))
    gy = np.exp(-(centres[None, None] - reference[..., 1:]) ** 2 / (2 * bandwidth ** 2))
    images = np.einsum("lny,lnx->lyx", gy, gx) / (particles * 2 * np.pi * bandwidth ** 2)  # (L, rows = y, cols = x)
    times, extent = np.linspace(0.0, 1.0, 11), ((-3.0, -3.0), (3.0, 3.0))
    base = McKeanVlasovSDE(2, external_force=lambda z: -z, diffusion=0.5)  # biased: relaxes to 0

    def forecast(observations, strength=20.0):
        run = NudgedSDE(base, observations, bandwidth, strength).simulate(
            torch.from_numpy(reference[0]).unsqueeze(0), times, 0.01, seed=3, progress=False)
        return float(w2(run.positions[0, -1], torch.from_numpy(reference[-1])))

    default = forecast(GridObservations(images, extent, times))
    transposed = forecast(GridObservations(np.ascontiguousarray(images.transpose(0, 2, 1)), extent, times,
                                           indexing="ij"))
    old_reading = forecast(GridObservations(images, extent, times, indexing="ij"))
    report.metrics.update(w2_default=default, w2_transposed_ij=transposed, w2_numpy_read_as_xy_old=old_reading,
                          w2_unnudged=forecast(GridObservations(images, extent, times), 0.0))
    tolerance = lambda value: abs(value - transposed) <= 0.05 * transposed  # noqa: E731
    report.check("final W2, numpy-order images with defaults vs the transposed ones (relative difference)",
                 default, f"within 5% of {transposed:.4f}", tolerance,
                 baseline=("numpy images read as (x, y), the old default", old_reading))

    def warned(stack) -> float:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            GridObservations(stack, extent, times)
        return float(sum("far from 1" in str(w.message) for w in caught))

    report.check("a stack of mass 255 warns (number of warnings)", warned(images * 255), ">= 1",
                 lambda v: v >= 1, baseline=("a stack of mass 1 (must not warn)", warned(images)))


def main() -> int:
    args = standard_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    report = Report("reproduce_own_data", args)
    with tempfile.TemporaryDirectory() as folder:
        check_identify(report, args.quick, Path(folder))
    check_images(report, args.quick)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
