"""Every bad input tried against the particle core, in one table.

Each row: what is called, the exception type, and a fragment the message must contain (the
argument's name or the cause). Method-specific bad inputs live beside each method's tests.
"""
import numpy as np
import pytest
import torch

from torchmf import Trajectories, systems
from torchmf.grid import Grid, GridConvolution
from torchmf.interaction import InteractionForce
from torchmf.kernels import GaussianKernel, LogPotential, PeriodicKernel, QANRPotential, potential_from_spec
from torchmf.metrics import relative_error, smoothed_density, w2
from torchmf.sde import McKeanVlasovSDE, ReflectingBox, simulate

NAN = float("nan")
X = torch.randn(10, 2)
ONE_D = McKeanVlasovSDE(1, diffusion=1.0, n_experiments=3)

CASES = [
    # Trajectories
    ("positions of rank 2", lambda: Trajectories(torch.zeros(2, 3), torch.arange(2.0)), ValueError, "positions"),
    ("positions of rank 5", lambda: Trajectories(torch.zeros(1, 3, 4, 2, 1), torch.arange(3.0)), ValueError, "positions"),
    ("NaN positions", lambda: Trajectories(torch.full((1, 3, 4, 2), NAN), torch.arange(3.0)), ValueError, "NaN"),
    ("no particles", lambda: Trajectories(torch.zeros(1, 3, 0, 2), torch.arange(3.0)), ValueError, "positions"),
    ("times length mismatch", lambda: Trajectories(torch.zeros(1, 3, 4, 2), torch.arange(4.0)), ValueError, "times"),
    ("non-increasing times", lambda: Trajectories(torch.zeros(1, 3, 4, 2), torch.tensor([0.0, 2.0, 1.0])), ValueError,
     "increasing"),
    ("inf in times", lambda: Trajectories(torch.zeros(1, 3, 4, 2), torch.tensor([0.0, float("inf"), 1.0])), ValueError,
     "times"),
    ("integer positions", lambda: Trajectories(torch.zeros(1, 2, 3, 1, dtype=torch.int64), torch.arange(2.0)), TypeError,
     "positions"),
    ("meta not JSON", lambda: Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0), {"bad": object()}), TypeError,
     "meta"),
    ("extras of wrong shape", lambda: Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0),
                                                   extras={"v": torch.zeros(1, 2, 4, 1)}), ValueError, "extras"),
    # kernels
    ("zero bandwidth", lambda: GaussianKernel(0.0), ValueError, "bandwidth"),
    ("NaN bandwidth", lambda: GaussianKernel(NAN), ValueError, "bandwidth"),
    ("fractional dim", lambda: GaussianKernel(1.0, dim=1.5), TypeError, "dim"),
    ("negative cutoff", lambda: LogPotential(-1), ValueError, "cutoff"),
    ("negative box length", lambda: PeriodicKernel(GaussianKernel(1.0), [1.0, -1.0]), ValueError, "box"),
    ("periodizing a lambda", lambda: PeriodicKernel(lambda x: x, 1.0), TypeError, "kernel"),
    ("NaN displacement", lambda: GaussianKernel(1.0).gradient(torch.tensor([[NAN, 0.0]])), ValueError, "x"),
    ("list displacement", lambda: GaussianKernel(1.0).value([[0.0]]), TypeError, "x"),
    ("unknown potential name", lambda: potential_from_spec("nope"), ValueError, "potential"),
    ("potential spec of wrong type", lambda: potential_from_spec(3), TypeError, "potential"),
    # grid
    ("upper below lower", lambda: Grid(1.0, 0.0, 10), ValueError, "upper"),
    ("one node", lambda: Grid(0.0, 1.0, 1), ValueError, "shape"),
    ("fractional node count", lambda: Grid(0.0, 1.0, 10.5), TypeError, "shape"),
    ("corner dimension mismatch", lambda: Grid([0.0, 0.0, 0.0], [1.0, 1.0], 10), ValueError, "upper"),
    ("particle outside the grid", lambda: Grid(0.0, 1.0, 10).deposit(torch.tensor([[1.5]])), ValueError, "outside"),
    ("NaN particle on grid", lambda: Grid(0.0, 1.0, 10).deposit(torch.tensor([[NAN]])), ValueError, "positions"),
    ("2-D particles on 1-D grid", lambda: Grid(0.0, 1.0, 10).deposit(torch.zeros(4, 2)), ValueError, "positions"),
    ("unknown deposit scheme", lambda: Grid(0.0, 1.0, 10).deposit(torch.zeros(4, 1), scheme="tsc"), ValueError, "scheme"),
    ("unknown deposit method", lambda: Grid(0.0, 1.0, 10).deposit(torch.zeros(4, 1), method="fast"), ValueError,
     "method"),
    ("unknown deposit method of a force", lambda: InteractionForce(GaussianKernel(0.5, 2), deposit_method="fast"),
     ValueError, "deposit_method"),
    ("weights of wrong length", lambda: Grid(0.0, 1.0, 10).deposit(torch.zeros(4, 1), weights=torch.ones(3)), ValueError,
     "weights"),
    ("field of wrong grid shape", lambda: Grid(0.0, 1.0, 10).interpolate(torch.zeros(11), torch.zeros(4, 1)), ValueError,
     "field"),
    ("convolution without a grid", lambda: GridConvolution("grid", lambda x: x), TypeError, "grid"),
    # interaction
    ("unknown backend", lambda: InteractionForce(GaussianKernel(0.5, 2), "magic"), ValueError, "backend"),
    ("grid given as a tuple", lambda: InteractionForce(GaussianKernel(0.5, 2), "grid", grid=(0, 1, 10)), TypeError,
     "grid"),
    ("sources of another dimension", lambda: InteractionForce(GaussianKernel(0.5, 2))(X, torch.randn(10, 3)), ValueError,
     "y"),
    ("NaN queries", lambda: InteractionForce(GaussianKernel(0.5, 2))(torch.full((4, 2), NAN)), ValueError, "x"),
    ("source weights of wrong length", lambda: InteractionForce(GaussianKernel(0.5, 2))(X, X, torch.ones(9)), ValueError,
     "weights"),
    ("queries of another dimension than the grid",
     lambda: InteractionForce(GaussianKernel(0.5, 2), "grid", grid=Grid(0, 1, 8))(X), ValueError, "x"),
    ("particles outside the force grid",
     lambda: InteractionForce(GaussianKernel(0.5, 2), "grid", grid=Grid(-1, 1, 8, dim=2))(X * 50), ValueError, "outside"),
    ("zero chunk size", lambda: InteractionForce(GaussianKernel(0.5, 2), chunk_size=0), ValueError, "chunk_size"),
    ("keops with a non-symbolic potential", lambda: InteractionForce(QANRPotential(), "keops")(X), ValueError, "keops"),
    # SDE
    ("unknown noise type", lambda: McKeanVlasovSDE(1, noise_type="general"), ValueError, "noise type"),
    ("three diffusions in 2-D", lambda: McKeanVlasovSDE(2, diffusion=[1.0, 2.0, 3.0]), ValueError, "diffusion"),
    ("negative diffusion", lambda: McKeanVlasovSDE(1, diffusion=-1.0), ValueError, "diffusion"),
    ("external force not callable", lambda: McKeanVlasovSDE(1, external_force=3.0), TypeError, "external_force"),
    ("learned drift not a module", lambda: McKeanVlasovSDE(1, learned_drift=lambda x: x), TypeError, "learned_drift"),
    ("reflecting box upside down", lambda: ReflectingBox(1.0, 0.0), ValueError, "upper"),
    ("torchsde batch not divisible by M", lambda: ONE_D.f(0.0, torch.zeros(10, 1)), ValueError, "y"),
    ("repeated recording time", lambda: simulate(ONE_D, torch.zeros(1, 5, 1), [0.0, 0.0, 1.0], dt=0.1), ValueError,
     "times"),
    ("zero time step", lambda: simulate(ONE_D, torch.zeros(1, 5, 1), [0.0, 1.0], dt=0.0), ValueError, "dt"),
    ("NaN initial state", lambda: simulate(ONE_D, torch.full((1, 5, 1), NAN), [0.0, 1.0], dt=0.1), ValueError, "x0"),
    ("boundary given as a string", lambda: simulate(ONE_D, torch.zeros(1, 5, 1), [0.0, 1.0], dt=0.1, boundary="reflect"),
     TypeError, "boundary"),
    ("diverging simulation", lambda: simulate(McKeanVlasovSDE(1, external_force=lambda x: x**3), torch.full((1, 4, 1), 10.0),
                                              [0.0, 5.0], dt=0.5, progress=False), ValueError, "dt"),
    # systems
    ("unknown system", lambda: systems.get("no_such_system"), ValueError, "name"),
    ("unknown system parameter", lambda: systems.get("ou_linear", nonsense=1), TypeError, "params"),
    ("negative interaction strength", lambda: systems.get("ou_linear", a=-1.0), ValueError, "a"),
    ("unknown diffusion mode", lambda: systems.get("qanr_1d", diffusion="sometimes"), ValueError, "diffusion"),
    ("start outside the box", lambda: systems.get("box_diffusion", start=[20.0, 5.0]), ValueError, "start"),
    ("zero particles", lambda: systems.get("ou_linear").simulate(n_particles=0), ValueError, "n_particles"),
    ("fractional experiments", lambda: systems.get("ou_linear").simulate(n_experiments=1.5), TypeError, "n_experiments"),
    ("decreasing recording times", lambda: systems.get("ou_linear").simulate(times=[1.0, 0.5]), ValueError, "times"),
    ("negative micro step", lambda: systems.get("ou_linear").simulate(dt=-0.1), ValueError, "dt"),
    # metrics
    ("unknown W2 method", lambda: w2(X, X, method="emd"), ValueError, "method"),
    ("W2 between dimensions", lambda: w2(X, torch.randn(10, 3)), ValueError, "y"),
    ("W2 of NaN cloud", lambda: w2(torch.full((10, 2), NAN), X), ValueError, "x"),
    ("sorting in 2-D", lambda: w2(X, X, method="sort"), ValueError, "method"),
    # (exact W2 of unequal sizes is valid since issue 26: exact weighted transport, tests/test_transport_*.py)
    ("negative blur", lambda: w2(X, X, method="sinkhorn", blur=-1.0), ValueError, "blur"),
    ("density on a grid of another dimension", lambda: smoothed_density(X, Grid(0, 1, 8), 0.1), ValueError, "grid"),
    ("zero density bandwidth", lambda: smoothed_density(X, Grid(-5, 5, 8, dim=2), 0.0), ValueError, "bandwidth"),
    ("relative error to zero", lambda: relative_error(torch.ones(2), torch.zeros(2)), ValueError, "truth"),
    ("relative error of mismatched shapes", lambda: relative_error(torch.ones(3), torch.ones(2)), ValueError, "estimate"),
]


@pytest.mark.parametrize("call, error, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_a_named_cause(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_asked_for_where_there_is_none():
    with pytest.raises(ValueError, match="device"):
        systems.get("ou_linear").simulate(device="cuda")


def test_keops_asked_for_without_pykeops():
    try:
        import pykeops  # noqa: F401
        pytest.skip("pykeops is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="pykeops"):
        InteractionForce(GaussianKernel(0.5, 2), "keops")(X)


def test_files_that_are_not_datasets(tmp_path):
    data = Trajectories(torch.zeros(1, 2, 3, 1), torch.arange(2.0))
    with pytest.raises(ValueError, match="path"):
        data.save(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError, match="path"):
        Trajectories.load(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="path"):
        Trajectories.load(foreign)
    other = tmp_path / "other.npz"
    np.savez(other, positions=np.zeros((1, 2, 3, 1)))
    with pytest.raises(ValueError, match="times"):  # a plain file needs positions and times
        Trajectories.load(other)
