"""``torchmf nudge --observations FILE --model SPEC``: nudge the user's model towards the user's data.

Order of work (every check before any simulation): read the observations with their units (a unit
is never guessed: a track table's frame numbers need ``--frame-dt``; images need times and edges
from the file's metadata or the flags), take a microscope image's floor out (``--background``, or
refuse a floor left in), set the observation kernel (``--psf`` / ``--bandwidth``), check that the
image window holds the population (or ``--field-of-view``), then run. The last ``--holdout``
frames are not assimilated: the nudged run stops nudging there and goes on with the model alone,
and the verdict compares its misfit on those frames with that of the un-nudged model (same
observations, same start, same noise). A worse held-out misfit is said, and exits with status 1.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

__all__ = ["nudge_own_data", "CLI_NAMES"]

#: what the observation checks call their options on the command line
CLI_NAMES = {"background": "--background", "normalize": "--normalize"}
#: default nudging relaxation rate, per frame interval (measured on scripts/reproduce_microscope.py: W2 to the
#: held-out truth 0.38-0.50x the model alone's at 100 (lambda = 100 there), near the sampling floor at 50)
RATE_PER_FRAME = 50.0
_EDGE_LIMIT = 0.02  # share of an image's mass next to its edge above which particles will leave the window


def nudge_own_data(args, params) -> int:
    """Run the command on the user's data (see the module docstring); returns the exit status."""
    from ..data.observations import GridObservations
    from ..runs import load_model

    if args.observations is None or args.model is None:
        raise ValueError("--observations: own-data nudging needs both --observations FILE and --model, "
                         f"but got observations={args.observations!r}, model={args.model!r}")
    if args.system is not None:
        raise ValueError(f"system: give a registered system or --observations/--model, but got both ({args.system!r})")
    observations, units = read_own_observations(args)
    is_image = isinstance(observations, GridObservations)
    bandwidth, blur_note = observation_kernel(args, observations, is_image)
    if is_image and blur_note.get("extra_blur"):
        observations = observations.blurred(blur_note["extra_blur"])
    holdout = _holdout(args, observations.n_times)
    model, description = load_model(args.model, params)
    start = _start(args, observations)
    check_window(args, observations, start, bandwidth, is_image)
    for line in units_lines(units) + [blur_note["line"]] + _background_lines(observations):
        print(line)
    dt = args.dt or float(observations.times.diff().min()) / 10
    strengths, strength_line = _strengths(args, observations, bandwidth, is_image)
    print(strength_line + f"; time step {dt:g} ({'--dt' if args.dt else 'default: a tenth of the frame interval'})")
    runs = {label: run for label, run in _runs(args, model, observations, holdout, start, bandwidth, dt, strengths)}
    grid = observations.grid if is_image else None
    misfits = {label: _misfit(run, observations, grid, bandwidth) for label, run in runs.items()}
    assimilated = observations.n_times - holdout
    caveat = _floor_left(observations) if is_image else None
    verdicts = {label: judge(values, misfits["un-nudged"], assimilated, caveat) for label, values in misfits.items()
                if label != "un-nudged"}
    context = {"description": description, "strengths": strengths, "bandwidth": bandwidth, "kernel": blur_note,
               "dt": dt, "particles": int(start.shape[1]), "holdout": holdout, "units": units}
    _write_outputs(args, runs, misfits, verdicts, observations, context)
    first = verdicts[f"lambda={strengths[0]:g}"]
    # status 1: the written run is worse than the model alone on the held-out frames, or cannot be judged
    return 1 if first["worse"] or first.get("caveat") else 0


def _write_outputs(args, runs, misfits, verdicts, observations, context) -> None:
    """OUT/nudge.json, the figure OUT/nudge.png (unless --no-plot), the run of the first strength
    (-o), and the printed summary, misfits and verdicts."""
    from ..data import Trajectories
    from ..data.files import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assimilated = observations.n_times - context["holdout"]
    figures = []
    if not args.no_plot:
        from .nudge_figure import own_data_figure

        figures.append(own_data_figure(out / "nudge.png", runs, misfits, observations, context["bandwidth"],
                                       assimilated, context["units"]))
    is_image = hasattr(observations, "grid")
    result = {"observations": str(args.observations), "model": context["description"], "seed": args.seed,
              **{key: context[key] for key in ("strengths", "bandwidth", "kernel", "dt", "particles", "holdout",
                                               "units")},
              "times": observations.times.tolist(), "misfit": misfits, "verdict": verdicts,
              "figures": [figure.name for figure in figures], "background": _background_summary(observations),
              "misfit_kind": "L2 of smoothed density minus image" if is_image else "W2 to the observed particles"}
    write_json(out / "nudge.json", result)
    for label, values in misfits.items():
        print(f"{label:>14}: final misfit {values[-1]:.4g}, mean {sum(values) / len(values):.4g}")
    for label, verdict in verdicts.items():
        print(f"{label:>14}: {verdict['line']}")
    if args.output is not None:
        strength = context["strengths"][0]
        run = runs[f"lambda={strength:g}"]
        saved = Trajectories(run.positions, run.times, dict(run.meta, model=context["description"],
                                                            nudging_strength=strength))
        print(f"wrote {saved.save(Path(args.output))}")
    print(f"wrote {out / 'nudge.json'}" + "".join(f" and {figure}" for figure in figures))


# -- reading, with units ----------------------------------------------------------------------------------------
def read_own_observations(args):
    """``(observations, units)``: the file's observations and, per quantity, ``{"unit", "source"}``."""
    from ..data import read_particle_data
    from ..data.images import read_image_metadata, read_images
    from ..data.observations import GridObservations, ParticleObservations
    from ..data.files import read_plain_arrays
    from ..data.readers import TABLE_SUFFIXES

    path = Path(args.observations)
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES or (suffix in (".npz", ".h5", ".hdf5") and "positions" in read_plain_arrays(path)):
        _refuse_image_options(args)
        if suffix in TABLE_SUFFIXES and args.frame_dt is None:
            raise ValueError(f"--frame-dt: {str(path)!r} is a track table whose 'frame' column counts frames; pass "
                             f"--frame-dt (the time between frames, in the model's time unit): the time unit is "
                             f"never guessed")
        import argparse

        options = argparse.Namespace(frame_dt=args.frame_dt if suffix in TABLE_SUFFIXES else None)
        if suffix not in TABLE_SUFFIXES and args.frame_dt is not None:
            raise ValueError(f"--frame-dt: applies to track tables and images without times; {str(path)!r} "
                             f"stores its times")
        data = read_particle_data(path, options)
        time_source = "--frame-dt x frame number" if suffix in TABLE_SUFFIXES else "the file's 'times'"
        units = {"time": {"unit": None, "source": time_source},
                 "length": {"unit": None, "source": "the file's coordinates"}}
        return ParticleObservations(data), units
    images, stored = read_images(path)
    metadata = read_image_metadata(path, images.shape) if suffix in (".tif", ".tiff") else \
        read_image_metadata(path)
    times, time_source = stored.get("times"), metadata.sources.get("times", "the file")
    if args.frame_dt is not None:
        if not (math.isfinite(args.frame_dt) and args.frame_dt > 0):
            raise ValueError(f"--frame-dt: expected a positive number, but got {args.frame_dt}")
        overridden = f" (overrides {time_source})" if times is not None else ""
        times = [index * args.frame_dt for index in range(images.shape[-3] if images.ndim >= 3 else 1)]
        time_source = f"--frame-dt {args.frame_dt:g}{overridden}"
    extent, length_source = None, metadata.sources.get("extent", "the file")
    if args.extent is not None:
        if len(args.extent) % 2:
            raise ValueError(f"--extent: expected pairs x0 x1 [y0 y1 ...], but got {len(args.extent)} numbers")
        extent = (args.extent[0::2], args.extent[1::2])
        length_source = "--extent" + (f" (overrides {metadata.sources['extent']})" if "extent" in stored else "")
    elif "extent" in stored:
        extent = (stored["extent"][0].tolist(), stored["extent"][1].tolist())
    if times is None:
        raise ValueError(f"--frame-dt: {str(path)!r} states no frame times (no 'times' array, no ImageJ/OME frame "
                         f"interval); pass --frame-dt (the time between frames): the time unit is never guessed")
    if extent is None:
        raise ValueError(f"--extent: {str(path)!r} states no image edges (no 'extent' array, no ImageJ/OME pixel "
                         f"size); pass --extent x0 x1 y0 y1: the length unit is never guessed")
    background = _background_option(args.background)
    captured = []
    with warnings.catch_warnings(record=True) as captured:
        warnings.simplefilter("always")
        observations = GridObservations(images, extent, times, indexing=args.indexing, origin=args.origin,
                                        normalize=args.normalize or False, field_of_view=args.field_of_view,
                                        background=background, strict=True, names=CLI_NAMES)
    _mass_check(args, observations, captured)
    units = {"time": {"unit": metadata.time_unit if time_source.startswith(("TIFF", "the file")) else None,
                      "source": time_source},
             "length": {"unit": metadata.length_unit if args.extent is None else None, "source": length_source}}
    return observations, units


def _refuse_image_options(args):
    for option, value in (("--background", args.background), ("--psf", args.psf), ("--extent", args.extent)):
        if value is not None:
            raise ValueError(f"{option}: applies to image stacks, but --observations holds particle data")
    if args.field_of_view:
        raise ValueError("--field-of-view: applies to image stacks, but --observations holds particle data")


def _background_option(value):
    if value is None or value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--background: expected 'auto' or a number (counts per pixel), but got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"--background: expected 'auto' or a finite number, but got {value!r}")
    return number


def _mass_check(args, observations, captured):
    """Print the reading's warnings as one line each; refuse images that are no density (mass far from 1)."""
    masses = observations.masses()
    far = bool(((masses - 1).abs() > 0.1).any())
    for warning in captured:
        if far and not args.field_of_view and "far from 1" in str(warning.message):
            continue  # refused below
        print(f"torchmf nudge: warning: {warning.message}", file=sys.stderr)
    if far and not args.field_of_view and not args.normalize:
        raise ValueError(f"--normalize: the images' mass (sum of values x pixel area "
                         f"{observations.grid.cell_volume:.3g})"
                         f" is {float(masses.min()):.4g}..{float(masses.max()):.4g}, not 1: they are not a probability "
                         f"density; pass --normalize (each image scaled to mass 1)")


def units_lines(units) -> list:
    lines = []
    for quantity, entry in units.items():
        unit = entry["unit"] or "the unit of the data (not stated in the file: the model must use the same)"
        lines.append(f"{quantity} unit: {unit}; from {entry['source']}")
    return lines


# -- the observation kernel ---------------------------------------------------------------------------------------
def observation_kernel(args, observations, is_image):
    """``(bandwidth h, note)``: images hold a blur; the nudging kernel must equal it (``--psf``), or
    the images are blurred further to a wider ``--bandwidth`` (never sharpened)."""
    if args.psf is not None and not (math.isfinite(args.psf) and args.psf > 0):
        raise ValueError(f"--psf: expected a positive number, but got {args.psf}")
    if not is_image:
        bandwidth = 0.2 if args.bandwidth is None else args.bandwidth
        source = "--bandwidth" if args.bandwidth is not None else "default"
        return bandwidth, {"line": f"bandwidth {bandwidth:g} ({source}): the kernel both clouds are smoothed with"}
    if args.psf is None and args.bandwidth is None:
        raise ValueError("--psf: nudging compares the model's density smoothed with a Gaussian of bandwidth h with the "
                         "images, so h must equal the blur the images hold: pass --psf SIGMA (the PSF's standard "
                         "deviation in the image's length unit) or --bandwidth H (the images then hold a blur H)")
    pixel = max(observations.grid.spacing)
    if args.psf is None:
        bandwidth, line = args.bandwidth, (f"bandwidth {args.bandwidth:g} (--bandwidth): the images are taken to hold "
                                           f"a Gaussian blur of standard deviation {args.bandwidth:g} (--psf if not)")
        extra = None
    else:
        bandwidth = args.psf if args.bandwidth is None else args.bandwidth
        if bandwidth < args.psf * (1 - 1e-9):
            raise ValueError(f"--bandwidth: {bandwidth:g} is narrower than the blur the images hold "
                             f"(--psf {args.psf:g})"
                             f"; images cannot be sharpened: pass --bandwidth >= {args.psf:g} or leave it out")
        extra = math.sqrt(max(bandwidth ** 2 - args.psf ** 2, 0.0)) or None
        line = (f"bandwidth {bandwidth:g}: the images' blur --psf {args.psf:g}" +
                (f", blurred further by {extra:.3g} to match --bandwidth" if extra else ""))
    if bandwidth < pixel:
        line += f"; note: below the pixel size {pixel:.3g}, the images cannot resolve it"
    return bandwidth, {"line": line, "bandwidth": bandwidth, "psf": args.psf, "extra_blur": extra}


def _strengths(args, observations, bandwidth: float, is_image: bool):
    """``--strength`` as given, or the data's own default: the nudging's relaxation rate
    ``lambda P / (e h^2)`` (the stability rate of :class:`~torchmf.nudging.NudgedSDE`, ``P`` the
    peak observed smoothed density) set to ``RATE_PER_FRAME`` per frame interval. A fixed number
    would carry the units of lambda (length^(d+2) / time): 100 is strong in one unit and nothing in another."""
    if args.strength:
        return list(args.strength), f"strength {', '.join(f'{v:g}' for v in args.strength)} (--strength)"
    peak = _observed_peak(observations, bandwidth, is_image)
    interval = float(observations.times.diff().min())
    strength = float(f"{RATE_PER_FRAME * math.e * bandwidth ** 2 / (peak * interval):.3g}")
    return [strength], (f"strength {strength:g} (default: lambda P / (e h^2) = {RATE_PER_FRAME:g} per frame "
                        f"interval {interval:g}, P = {peak:.3g} the first frame's peak density; --strength to choose)")


def _observed_peak(observations, bandwidth: float, is_image: bool) -> float:
    if is_image:
        return float(observations.densities[:, 0].max())
    from ..grid import Grid
    from ..metrics import smoothed_density

    points, weights = observations.sources(0)
    grid = Grid.covering(points[0].double(), 128)
    return float(smoothed_density(points[0].double(), grid, bandwidth, weights[0].double()).max())


# -- checks before any simulation ------------------------------------------------------------------------------
def _holdout(args, count: int) -> int:
    holdout = args.holdout if args.holdout is not None else (1 if count >= 4 else 0)
    if holdout < 0 or count - holdout < 2:
        raise ValueError(f"--holdout: expected 0 to {max(count - 2, 0)} held-out frames (two at least are "
                         f"assimilated) for {count} frames, but got {holdout}")
    return holdout


def _start(args, observations):
    from ..data import initial_particles, read_particle_data

    if args.initial is not None:
        return read_particle_data(args.initial).require_complete("--initial").positions[:, 0].double()
    # after a background is subtracted, the noise about 0 is no cell: only pixels above it are drawn from
    return initial_particles(observations, args.particles or 2000, args.seed,
                             above_noise=getattr(observations, "background", None) is not None)


def check_window(args, observations, start, bandwidth, is_image) -> None:
    """Images without ``--field-of-view``: the window must hold the population; refuse before any run
    when the start lies outside it or the images carry mass next to their edges (particles will leave)."""
    if not is_image or args.field_of_view:
        return
    grid = observations.grid
    lower, upper = start.new_tensor(grid.lower), start.new_tensor(grid.upper)
    outside = int(((start < lower) | (start > upper)).any(-1).sum())
    if outside:
        raise ValueError(f"--field-of-view: {outside} initial particles lie outside the image window {list(grid.lower)}"
                         f"..{list(grid.upper)} (the nudging grid); pass --field-of-view (particles outside feel no "
                         f"nudging) or images that cover the population")
    share = float(edge_share(observations, max(2 * bandwidth, max(grid.spacing))).max())
    if share > _EDGE_LIMIT:
        raise ValueError(f"--field-of-view: {100 * share:.1f}% of an image's mass lies within "
                         f"{max(2 * bandwidth, max(grid.spacing)):.3g} of the window's edge, so particles will leave "
                         f"the nudging grid (the image window) during the run; pass --field-of-view (the images see "
                         f"only their window; particles outside feel no nudging)")


def edge_share(observations, width: float):
    """Share of each image's mass in the band of ``width`` along the window's edge: ``(M, L)``."""
    import torch

    grid = observations.grid
    nodes = grid.nodes(dtype=torch.float64)
    lower = torch.tensor(grid.lower, dtype=torch.float64) - 0.5 * torch.tensor(grid.spacing, dtype=torch.float64)
    upper = torch.tensor(grid.upper, dtype=torch.float64) + 0.5 * torch.tensor(grid.spacing, dtype=torch.float64)
    band = ((nodes - lower < width) | (upper - nodes < width)).any(-1)
    values = observations.densities.double().cpu()
    total = values.flatten(2).sum(-1)
    return (values * band).flatten(2).sum(-1) / total


# -- the runs and their judgement ---------------------------------------------------------------------------------
def _runs(args, model, observations, holdout, start, bandwidth, dt, strengths):
    """``(label, run)``: each strength nudged over the assimilated frames, then the model alone over the
    held-out ones; the un-nudged model over all frames (the baseline), with the same noise."""
    import torch

    from ..data import Trajectories
    from ..nudging import NudgedSDE
    from ..sde import simulate

    progress = not args.no_progress
    times = observations.times
    assimilated = observations.head(observations.n_times - holdout) if holdout else observations
    for strength in strengths:
        nudged = NudgedSDE(model, assimilated, bandwidth, strength, backend=args.backend, scheme=args.scheme,
                           margin=args.margin)
        run = _outside_named(lambda: nudged.simulate(start, assimilated.times, dt, seed=args.seed + 1,
                                                     progress=progress), hasattr(observations, "grid"))
        if holdout:
            rest = simulate(model, run.positions[:, -1], times[-holdout - 1:], dt, seed=args.seed + 2,
                            progress=progress)
            run = Trajectories(torch.cat([run.positions, rest.positions[:, 1:]], 1), times.to(run.times),
                               dict(run.meta, holdout=holdout))
        yield f"lambda={strength:g}", run
    free = NudgedSDE(model, observations, bandwidth, 0.0, backend=args.backend, scheme=args.scheme)
    yield "un-nudged", free.simulate(start, times, dt, seed=args.seed + 1, progress=progress)


def _outside_named(run, is_image: bool):
    """A forecast particle leaving the nudging grid, told with the flag that fixes it."""
    try:
        return run()
    except ValueError as error:
        if "outside the nudging grid" not in str(error):
            raise
        if is_image:
            raise ValueError(f"--field-of-view: {error}; pass --field-of-view (the images see only their window: "
                             f"particles outside feel no nudging)") from None
        raise ValueError(f"--margin: {error}; pass --margin M to widen the nudging grid by M beyond the observed "
                         f"particles (default max(6 h, 25% of their extent))") from None


def _floor_left(observations):
    """A floor still under the images used (``--background`` given too low, or 0): the held-out
    verdict, measured against these very images, cannot see it."""
    from ..data.background import FLOOR_LIMIT, floor_fraction

    share = floor_fraction(observations.densities.double().cpu().numpy(), observations.dim)
    typical = float(share.reshape(-1)[0]) if share.size == 1 else float(sorted(share.reshape(-1))[share.size // 2])
    if not typical > FLOOR_LIMIT:
        return None
    return (f"the images used still sit on a constant floor carrying {100 * typical:.0f}% of their mass "
            f"(--background too low or 0): a verdict against them cannot see what it does to the cells")


def judge(values, baseline, assimilated: int, caveat=None) -> dict:
    """The verdict on one nudged run: its misfit against the un-nudged model's, on the assimilated
    frames (what the nudging fits) and on the held-out ones (what it claims); ``caveat``: a reason
    the observations themselves are doubtful (then the verdict is not reliable, whatever it says)."""
    seen = sum(values[:assimilated]) / sum(baseline[:assimilated])
    held = len(values) - assimilated
    if not held:
        return {"assimilated_ratio": seen, "holdout_ratio": None, "worse": False, "reliable": False,
                "line": f"misfit {seen:.2f}x the un-nudged model's on the assimilated frames; not judged on held-out "
                        f"frames (--holdout 0): a fit to what it sees is no evidence"}
    ratio = sum(values[assimilated:]) / sum(baseline[assimilated:])
    worse = not ratio < 1
    verdict = ("WORSE than the un-nudged model on the held-out frames: the nudging does not help with these "
               "settings (check --background, --psf/--bandwidth, --strength)") if worse else \
        "better than the un-nudged model on the held-out frames"
    if caveat is not None and not worse:  # measured against doubtful images: no claim either way
        verdict = f"NOT JUDGED: {caveat}"
    line = (f"misfit {seen:.2f}x the un-nudged model's on the assimilated frames, {ratio:.2f}x on the {held} "
            f"held-out frame(s): {verdict}")
    return {"assimilated_ratio": seen, "holdout_ratio": ratio, "worse": worse, "reliable": not worse and caveat is None,
            "caveat": caveat, "line": line}


def _misfit(run, observations, grid, bandwidth):
    """Per observation time: L2 distance of the run's smoothed density to the image, or W2 to the observed cloud."""
    import torch

    from ..metrics import smoothed_density, w2

    values = []
    for index in range(observations.n_times):
        points = run.positions[:, index]
        if grid is not None:
            lower, upper = points.new_tensor(grid.lower), points.new_tensor(grid.upper)
            inside = ((points >= lower) & (points <= upper)).all(-1)  # outside a field of view: not observed
            density = smoothed_density(torch.where(inside.unsqueeze(-1), points, lower), grid, bandwidth,
                                       inside.to(points) / points.shape[-2])
            difference = density - observations.densities[:1, index].to(points)
            if observations.window is not None:
                difference = difference * observations.window.to(points)
            values.append(float(difference.pow(2).sum().sqrt() * grid.cell_volume ** 0.5))
        else:
            observed, weights = observations.sources(index)
            keep = weights[0] > 0
            values.append(float(w2(points[0], observed[0][keep].to(points))))
    return values


def _background_lines(observations) -> list:
    found = getattr(observations, "background", None)
    return [] if found is None else [found.describe()]


def _background_summary(observations):
    found = getattr(observations, "background", None)
    if found is None:
        return None
    return {"levels": found.levels.reshape(-1).tolist(), "source": found.source, "reliable": found.reliable,
            "reasons": found.reasons}
