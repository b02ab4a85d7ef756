"""LOT large steps scored one at a time from control clouds (issue 22), on box diffusion (Table 6.1)
and on drifts the estimator was not tuned on, each with the exact velocity of its law as the oracle.

Writes OUT/lot_steps.json: per case, N and seed, W2 over the sampling floor right after one large step
for the default LOT estimator, the oracle Euler step (same start cloud, same H, the exact velocity of
the law), standing still, and the LOT paper's section 5.2 average (on its own window); the velocity
errors of the default and the paper estimator against the exact velocity, and whether the default's
standard error covers its error (error <= 2 SE).

    python scripts/lot_steps.py --out runs                 # N = 1,000 / 2,000 / 4,000, 5 seeds
    python scripts/lot_steps.py --out runs --quick         # N = 1,000, 2 seeds
    python scripts/lot_steps.py --out runs --cases box,moving_source

Cases (the held-out ones are micro-simulators written here in plain torch, not torchmf systems):

- ``box``: 2-D reflected Brownian box of Table 6.1 (h = 1/16, k = 80, H = 85), steps from t = 35
  and t = 155 (centres); the law and its velocity in closed form
  (:meth:`torchmf.systems.box.BoxDiffusion.exact_velocity`).
- ``moving_source``: attraction towards a source circling the origin, dx = -a (x - c(t)) dt + s dW,
  from a bimodal Gaussian mixture: the law stays a Gaussian mixture (means and covariances by ODE),
  so its velocity -a (x - c) - s^2/2 grad log rho is exact.
- ``double_well``: dx = (x - x^3) dt + s dW, dy = -y dt + s dW from an asymmetric two-bump law in x:
  the x-marginal by a Crank-Nicolson Fokker-Planck solve on a fine grid, the y-marginal Gaussian;
  the velocity b - s^2/2 grad log rho from them.
- ``chemotaxis``: the 1-D bacterial chemotaxis of section 7 (hidden internal state, h = 1/16, k = 80,
  H = 95), steps centred at t = 300 and 600; its law has no closed form, so the oracle is the velocity
  by its definition, flux over density: the mean swimming velocity of the cells at x over a 20,000-cell
  ensemble and the 2k+1 micro steps of the window (bins of 0.1, interpolated in x).
- ``gradient_flow``: the deterministic double-well gradient flow x' = x - x^3, y' = -y from a uniform
  (edged) square; the velocity of the law is the drift itself; the law at t is a fresh square
  integrated to t (RK4).
"""
from __future__ import annotations

import math
import statistics
import sys
import time

import torch

from _report import Report, standard_parser

from torchmf import systems
from torchmf.lot import ProjectiveIntegrator, SystemSimulator, one_step_test


class DriftSimulator:
    """A user-written micro-simulator: Euler-Maruyama (RK4 when noise = 0) of dx = b(x, t) dt + noise dW."""

    def __init__(self, drift, noise, dt, positions, time, seed):
        self.drift, self.noise, self.dt, self.time = drift, noise, dt, time
        self.state = positions.clone()
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, n):
        for _ in range(n):
            x, t, h = self.state, self.time, self.dt
            if self.noise == 0:
                k1 = self.drift(x, t)
                k2 = self.drift(x + 0.5 * h * k1, t + 0.5 * h)
                k3 = self.drift(x + 0.5 * h * k2, t + 0.5 * h)
                k4 = self.drift(x + h * k3, t + h)
                self.state = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            else:
                kick = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
                self.state = x + h * self.drift(x, t) + self.noise * math.sqrt(h) * kick
            self.time += h

    def positions(self):
        return self.state

    def set_positions(self, positions):
        self.state = positions.clone()


# -- moving source: a Gaussian mixture for all time --------------------------------------------------------
RATE, NOISE, RADIUS, TURN = 0.5, 0.5, 2.0, 0.3
MIX_MEANS = torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
MIX_SCALES = torch.tensor([0.4, 0.7], dtype=torch.float64)
MIX_WEIGHTS = torch.tensor([0.35, 0.65], dtype=torch.float64)


def source(t):
    return torch.tensor([RADIUS * math.cos(TURN * t), RADIUS * math.sin(TURN * t)], dtype=torch.float64)


def mixture_at(t, steps_per_unit=2000):
    """Component means (2, 2) and variances (2,) at time t (means by the exact exponential integrator)."""
    means = MIX_MEANS.clone()
    steps = max(1, int(t * steps_per_unit))
    h = t / steps
    for i in range(steps):
        # m' = -a (m - c(t)): exact decay towards the source held at the midpoint over each small step
        centre = source((i + 0.5) * h)
        means = centre + (means - centre) * math.exp(-RATE * h)
    variances = MIX_SCALES ** 2 * math.exp(-2 * RATE * t) + NOISE ** 2 * (1 - math.exp(-2 * RATE * t)) / (2 * RATE)
    return means, variances


def mixture_sample(n, t, generator):
    means, variances = mixture_at(t)
    labels = torch.multinomial(MIX_WEIGHTS, n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return means[labels] + variances[labels].sqrt()[:, None] * noise


def mixture_velocity(x, t):
    means, variances = mixture_at(t)
    x = x.double()
    offsets = x[:, None, :] - means[None]                                        # (N, 2, 2)
    log_weights = MIX_WEIGHTS.log() - offsets.pow(2).sum(-1) / (2 * variances) - variances.log()
    responsibility = torch.softmax(log_weights, dim=1)
    score = -(responsibility[..., None] * offsets / variances[None, :, None]).sum(1)
    return -RATE * (x - source(t)) - 0.5 * NOISE ** 2 * score


def moving_drift(x, t):
    return -RATE * (x - source(t).to(x))


# -- deterministic gradient flow from an edged square ---------------------------------------------------
def gradient_drift(x, t):
    return torch.stack([x[:, 0] - x[:, 0] ** 3, -x[:, 1]], 1)


def square_sample(n, t, generator, dt=0.002):
    x = torch.stack([4 * torch.rand(n, generator=generator, dtype=torch.float64) - 2,
                     2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1], 1)
    simulator = DriftSimulator(gradient_drift, 0.0, dt, x, 0.0, 0)
    simulator.step(int(round(t / dt)))
    return simulator.positions()


# -- double well with diffusion: x and y independent, the x-law by a Fokker-Planck solve --------------------
WELL_NOISE = 0.7
WELL_GRID = torch.linspace(-3.5, 3.5, 1751, dtype=torch.float64)
_WELL_CACHE = {}


def well_drift(x, t):
    return torch.stack([x[:, 0] - x[:, 0] ** 3, -x[:, 1]], 1)


def well_x_density(t, step=5e-4):
    """The x-marginal at time t: Crank-Nicolson for rho_t = (U' rho)_x + D rho_xx, U' = x^3 - x, from an
    asymmetric two-bump start; cached by time."""
    import numpy as np
    from scipy.linalg import solve_banded

    key = round(t, 9)
    if key in _WELL_CACHE:
        return _WELL_CACHE[key]
    x = WELL_GRID.numpy()
    dx, diffusion = x[1] - x[0], WELL_NOISE ** 2 / 2
    rho = 0.7 * np.exp(-(x + 0.3) ** 2 / (2 * 0.2 ** 2)) / 0.2 + 0.3 * np.exp(-(x - 0.8) ** 2 / (2 * 0.3 ** 2)) / 0.3
    rho /= rho.sum() * dx
    force = x ** 3 - x
    # L rho_i = (f_{i+1} rho_{i+1} - f_{i-1} rho_{i-1}) / 2dx + D (rho_{i+1} - 2 rho_i + rho_{i-1}) / dx^2
    upper = force[1:] / (2 * dx) + diffusion / dx ** 2
    lower = -force[:-1] / (2 * dx) + diffusion / dx ** 2
    middle = np.full_like(x, -2 * diffusion / dx ** 2)
    steps = int(round(t / step))
    h = t / steps if steps else 0.0
    banded = np.zeros((3, x.size))
    banded[0, 1:], banded[1], banded[2, :-1] = -0.5 * h * upper, 1 - 0.5 * h * middle, -0.5 * h * lower
    for _ in range(steps):
        right = rho + 0.5 * h * (middle * rho + np.r_[upper * rho[1:], 0.0] + np.r_[0.0, lower * rho[:-1]])
        rho = solve_banded((1, 1), banded, right)
    rho = np.clip(rho, 1e-300, None)
    _WELL_CACHE[key] = torch.from_numpy(rho / (rho.sum() * dx))
    return _WELL_CACHE[key]


def well_y_variance(t):
    return 0.5 ** 2 * math.exp(-2 * t) + WELL_NOISE ** 2 * (1 - math.exp(-2 * t)) / 2


def well_sample(n, t, generator):
    rho = well_x_density(t)
    cdf = torch.cumsum(rho, 0)
    cdf = cdf / cdf[-1]
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    index = torch.searchsorted(cdf, u).clamp(1, len(cdf) - 1)
    left, right = cdf[index - 1], cdf[index]
    fraction = (u - left) / (right - left).clamp_min(1e-300)
    x = WELL_GRID[index - 1] + fraction * (WELL_GRID[1] - WELL_GRID[0])
    y = math.sqrt(well_y_variance(t)) * torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([x, y], 1)


def well_velocity(points, t):
    points = points.double()
    log_rho = well_x_density(t).log()
    slope = torch.gradient(log_rho, spacing=(WELL_GRID,))[0]
    index = torch.searchsorted(WELL_GRID, points[:, 0].contiguous()).clamp(1, len(WELL_GRID) - 1)
    weight = (points[:, 0] - WELL_GRID[index - 1]) / (WELL_GRID[1] - WELL_GRID[0])
    score_x = slope[index - 1] * (1 - weight) + slope[index] * weight
    diffusion = WELL_NOISE ** 2 / 2
    return torch.stack([points[:, 0] - points[:, 0] ** 3 - diffusion * score_x,
                        -points[:, 1] + diffusion * points[:, 1] / well_y_variance(t)], 1)


# -- chemotaxis (LOT paper, section 7): the oracle is the velocity of a 20x larger ensemble ---------------
CHEMOTAXIS_REFERENCE = 20_000
_CHEMOTAXIS_CACHE = {}


def _seed(generator):
    return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))


def chemotaxis_sample(n, t, generator):
    model = systems.get("chemotaxis")
    simulator = SystemSimulator(model, n, seed=_seed(generator), dtype=torch.float64)
    simulator.step(int(round(t / simulator.dt)))
    return simulator.positions().clone()


def chemotaxis_start(n, t, generator):
    """A control simulator (hidden state included) at time t."""
    model = systems.get("chemotaxis")
    simulator = SystemSimulator(model, n, seed=_seed(generator), dtype=torch.float64)
    simulator.step(int(round(t / simulator.dt)))
    return simulator


def chemotaxis_velocity(points, t, k=80):
    """The velocity of the law by its definition, flux over density: the mean of the cells' own
    velocities (speed x direction while running, 0 while tumbling) given x, over a 20,000-cell ensemble
    and the 2k+1 micro steps centred at t, in bins of width 0.1, linearly interpolated in x. Independent
    of transport maps and of LOT (the earlier oracle, a 20x-ensemble LOT velocity, was beaten by the
    paper's own estimator, so it was not an oracle)."""
    import numpy as np

    key = round(t, 9)
    if key not in _CHEMOTAXIS_CACHE:
        model = systems.get("chemotaxis")
        simulator = SystemSimulator(model, CHEMOTAXIS_REFERENCE, seed=987_654, dtype=torch.float64)
        simulator.step(int(round(t / simulator.dt)) - k)
        edges = np.linspace(model.lower, model.upper, int(round((model.upper - model.lower) / 0.1)) + 1)
        sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
        for j in range(2 * k + 1):
            if j:
                simulator.step(1)
            state = simulator.state
            running = (state.motors.sum(-1) >= 4).double()
            velocity = (model.speed * state.direction * running)[0].numpy()
            bins = np.clip(np.searchsorted(edges, state.x[0, :, 0].numpy()) - 1, 0, len(edges) - 2)
            sums += np.bincount(bins, velocity, len(edges) - 1)
            counts += np.bincount(bins, None, len(edges) - 1)
        kept = counts >= 1_000  # bins with too few cells are left to the interpolation's ends
        centres = 0.5 * (edges[:-1] + edges[1:])
        _CHEMOTAXIS_CACHE[key] = (centres[kept], sums[kept] / counts[kept])
    grid, values = _CHEMOTAXIS_CACHE[key]
    import numpy as np
    return torch.from_numpy(np.interp(points[:, 0].double().numpy(), grid, values))[:, None]


CASES = {
    # name: (micro step h, k, H, centre times, N list full, sampler(n, t, gen), velocity(x, t), simulator factory)
    "box": dict(h=1 / 16, k=80, step=85.0, centres=(35.0, 155.0)),
    "moving_source": dict(h=0.01, k=20, step=1.0, centres=(1.0, 3.0)),
    "gradient_flow": dict(h=0.005, k=20, step=0.3, centres=(0.2, 0.8)),
    # reset: at centres 0.5 / 2.0 with H = 0.2 or 0.5 the law barely moved (the oracle Euler step 0.98-1.15x
    # the floor did not beat standing still, 0.94-1.13x); at 0.2 / 0.5 with H = 0.3 the oracle is 1.10 / 1.02
    # against standing still 1.52 / 1.20 (exact samples, N = 1,000, 3 seeds)
    "double_well": dict(h=0.005, k=20, step=0.3, centres=(0.2, 0.5)),
    "chemotaxis": dict(h=1 / 16, k=80, step=95.0, centres=(300.0, 600.0)),
}


def case_functions(name):
    if name == "box":
        box = systems.get("box_diffusion")

        def simulator(cloud, start, seed):
            return SystemSimulator(box, cloud.shape[0], seed=seed, dtype=torch.float64,
                                   initial_state=cloud.unsqueeze(0))
        return box.exact_sample, box.exact_velocity, simulator
    if name == "moving_source":
        return (mixture_sample, mixture_velocity,
                lambda cloud, start, seed: DriftSimulator(moving_drift, NOISE, CASES[name]["h"], cloud, start, seed))
    if name == "chemotaxis":
        return chemotaxis_sample, chemotaxis_velocity, None
    if name == "double_well":
        return (well_sample, well_velocity,
                lambda cloud, start, seed: DriftSimulator(well_drift, WELL_NOISE, CASES[name]["h"], cloud, start, seed))
    return (square_sample, lambda x, t: gradient_drift(x.double(), t),
            lambda cloud, start, seed: DriftSimulator(gradient_drift, 0.0, CASES[name]["h"], cloud, start, seed))


def run_case(report, name, sizes, seeds, paper_seeds, centres=None):
    settings = dict(CASES[name], **({} if centres is None else {"centres": centres}))
    sample, velocity, make_simulator = case_functions(name)
    rows = []
    for n in sizes:
        for centre in settings["centres"]:
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(10_000 * seed + n)
                start = centre - settings["k"] * settings["h"]
                integrator = ProjectiveIntegrator(k=settings["k"], step=settings["step"], progress=False)
                simulator = chemotaxis_start(n, start, generator) if make_simulator is None else \
                    make_simulator(sample(n, start, generator), start, seed)
                begin = time.perf_counter()
                row = one_step_test(integrator, simulator, start,
                                    lambda t: (sample(n, t, generator), sample(n, t, generator)),
                                    oracle_velocity=velocity, paper=seed < paper_seeds)
                row.update(case=name, n=n, seed=seed, centre=centre, seconds=time.perf_counter() - begin,
                           covered=row["velocity_error"] <= 2 * row.get("standard_error", float("nan")))
                rows.append(row)
                print({key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()},
                      flush=True)
    return rows


def summarize(report, name, rows):
    groups = {}
    for row in rows:
        # by the nominal centre: a grown window moves the step's own centre (row["t_centre"]) forward
        groups.setdefault((row["n"], row.get("centre", row["t_centre"])), []).append(row)
    lines = []
    for (n, _), group in sorted(groups.items()):
        median = {key: statistics.median(row[key] for row in group) for key in ("lot", "oracle", "standing_still")}
        papers = [row["paper_velocity_error"] / row["velocity_error"] for row in group if "paper" in row]
        lines.append(dict(n=n, centre=group[0].get("centre", group[0]["t_centre"]), seeds=len(group), **median,
                          lot_over_oracle=median["lot"] / median["oracle"],
                          below_standing_still=median["lot"] < median["standing_still"],
                          velocity_error_over_paper=(statistics.median(1 / p for p in papers) if papers else None),
                          coverage=sum(row["covered"] for row in group) / len(group)))
    report.metrics.setdefault("summary", {})[name] = lines
    worst = max(line["lot_over_oracle"] for line in lines)
    report.check(f"{name}: worst over N and steps of median W2(LOT)/W2(oracle Euler step)", round(worst, 3),
                 "<= 1.25", lambda v: v <= 1.25,
                 baseline=("median standing still / oracle (worst)",
                           round(max(line["standing_still"] / line["oracle"] for line in lines), 3)))
    report.check(f"{name}: median LOT below standing still at every N and step",
                 all(line["below_standing_still"] for line in lines), "True", lambda v: v,
                 baseline=("the paper's 5.2 average below standing still at every N and step (its own window)",
                           all(row["paper"] < row["paper_standing_still"] for row in rows if "paper" in row)))
    ratios = [line["velocity_error_over_paper"] for line in lines if line["velocity_error_over_paper"] is not None]
    if ratios:
        report.check(f"{name}: velocity error of the default / the paper's 5.2 average (worst median)",
                     round(max(ratios), 3), "<= 0.5", lambda v: v <= 0.5,
                     baseline=("the paper's average itself", 1.0))
    coverage = sum(row["covered"] for row in rows) / len(rows)
    report.check(f"{name}: velocity error <= 2 x its reported standard error (fraction of runs)",
                 round(coverage, 3), ">= 0.8", lambda v: v >= 0.8,
                 baseline=("median reported standard error / true error (calibration)",
                           round(statistics.median(row["standard_error"] / row["velocity_error"] for row in rows), 3)))


def main(argv=None) -> int:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per step (default 5; quick 2)")
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 1000,2000,4000; quick 1000)")
    parser.add_argument("--centres", default=None,
                        help="comma-separated window centres replacing each chosen case's own (e.g. 155 for box)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown cases {unknown}; expected a subset of {list(CASES)}")
    sizes = [int(v) for v in (args.sizes or ("1000" if args.quick else "1000,2000,4000")).split(",")]
    seeds = args.seeds or (2 if args.quick else 5)
    centres = None if args.centres is None else tuple(float(v) for v in args.centres.split(","))
    torch.set_num_threads(1)
    report = Report("lot_steps", args)
    report.settings.update(cases={name: CASES[name] for name in chosen}, sizes=sizes, seeds=seeds)
    rows = {}
    for name in chosen:
        rows[name] = run_case(report, name, sizes, seeds, paper_seeds=1 if name == "box" else seeds, centres=centres)
        summarize(report, name, rows[name])
    report.metrics["rows"] = rows
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
