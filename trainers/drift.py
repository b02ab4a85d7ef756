r"""Learn a neural mean-field drift from particle trajectories (Lightning).

The model (:class:`DriftModel`, plain torch) is

.. math::
    b_\theta(x_i, \mu^N) = f_\theta(x_i) + \frac1N \sum_j \phi_\theta(|x_i - x_j|)\,(x_i - x_j),

an external MLP :math:`f_\theta` of the position plus a radial interaction MLP :math:`\phi_\theta`
(positive: repulsion). The interaction is :math:`\nabla K * \mu^N` for the radial kernel with
:math:`k'(r) = r\,\phi_\theta(r)`, so it runs on :class:`torchmf.interaction.InteractionForce`:
pairwise (exact, differentiable) while training, grid (FFT) for large forecasts
(:meth:`DriftModel.use_grid`).

:class:`DriftModule` fits :math:`\theta` and a scalar diffusion :math:`\sigma` by the
Euler-Maruyama transition likelihood of consecutive snapshots
:math:`x_{t+\Delta} \mid x_t \sim \mathcal N(x_t + b_\theta(x_t, \mu_t)\Delta, \sigma^2\Delta I)`:

.. math::
    -\log p = \frac{|x_{t+\Delta} - x_t - b_\theta\Delta|^2}{2\sigma^2\Delta} + d\log\sigma + \tfrac d2\log(2\pi\Delta)

averaged over particles and pairs. :class:`TrajectoryDataModule` serves those pairs from a
Trajectories file or from a registered system simulated on a time window.

Shapes: snapshots ``(B, N, d)``; a batch is ``(x_t (B, N, d), x_next (B, N, d), dt (B,))``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchmf.grid import Grid
from torchmf.interaction import InteractionForce
from torchmf.kernels import RadialKernel
from torchmf.data import Trajectories
from torchmf.pretrained import load_payload

__all__ = ["DriftModel", "DriftModule", "TrajectoryDataModule", "build_drift_model", "RadialMLPKernel",
           "drift_model_from_checkpoint"]


def _mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    modules, width = [], inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    modules.append(nn.Linear(width, outputs))
    return nn.Sequential(*modules)


class RadialMLPKernel(RadialKernel):
    """Radial kernel whose gradient is :math:`\\phi(|z|) z`: ``profile_derivative(r) = r phi(r)``.

    Only gradients are defined (the potential itself is never needed for a force).
    """

    def __init__(self, network: nn.Module, length: float, strength: float):
        self.network = network
        self.length = float(length)
        self.strength = float(strength)

    def profile(self, r):  # pragma: no cover - forces only
        raise NotImplementedError("RadialMLPKernel defines gradients only")

    def profile_derivative(self, r):
        weight = self.network[0].weight
        scaled = (r / self.length).to(weight.dtype).unsqueeze(-1)
        phi = self.strength * self.network(scaled).squeeze(-1) * torch.exp(-scaled.squeeze(-1))
        return (r.to(weight.dtype) * phi).to(r.dtype)


class DriftModel(nn.Module):
    """:math:`b_\\theta(x, \\mu^N)` for particles ``(..., N, d) -> (..., N, d)``.

    Arguments:
        dim: ``d``.
        hidden / layers: width and depth of the external MLP.
        interaction_hidden / interaction_layers: of the radial MLP :math:`\\phi`.
        center / scale: positions are fed to the MLP as ``(x - center) / scale``.
        velocity_scale: the MLP's output unit.
        interaction_length: radial MLP input unit (distances are fed as ``r / length``; the
            learned :math:`\\phi` is damped by ``exp(-r / length)`` so it stays short-ranged).
        sigma: initial diffusion coefficient (learned in log space).
    """

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 2, interaction_hidden: int = 32,
                 interaction_layers: int = 2, center: Sequence[float] = (0.0, 0.0), scale: float = 1.0,
                 velocity_scale: float = 1.0, interaction_length: float = 1.0, sigma: float = 1.0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: expected a positive dimension, but got {dim}")
        center = list(center) if isinstance(center, (list, tuple)) else [float(center)] * dim
        if len(center) != dim:
            raise ValueError(f"center: expected {dim} numbers, but got {len(center)}")
        if scale <= 0 or velocity_scale <= 0 or interaction_length <= 0 or sigma <= 0:
            raise ValueError("scale: expected positive scale, velocity_scale, interaction_length and sigma")
        self.config = dict(dim=dim, hidden=hidden, layers=layers, interaction_hidden=interaction_hidden,
                           interaction_layers=interaction_layers, center=[float(c) for c in center],
                           scale=float(scale), velocity_scale=float(velocity_scale),
                           interaction_length=float(interaction_length), sigma=float(sigma))
        self.dim = dim
        self.external = _mlp(dim, hidden, layers, dim)
        self.radial = _mlp(1, interaction_hidden, interaction_layers, 1)
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))
        self.scale = float(scale)
        self.velocity_scale = float(velocity_scale)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.kernel = RadialMLPKernel(self.radial, interaction_length, velocity_scale / scale)
        self.interaction = InteractionForce(self.kernel, backend="pairwise", check=False)

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def use_grid(self, grid: Grid) -> "DriftModel":
        """Evaluate the interaction on ``grid`` (FFT; the kernel spectrum is cached, so call this
        after training and run the forecast under ``torch.no_grad()``)."""
        self.interaction = InteractionForce(self.kernel, backend="grid", grid=grid, check=False)
        return self

    def use_pairwise(self) -> "DriftModel":
        self.interaction = InteractionForce(self.kernel, backend="pairwise", check=False)
        return self

    def external_drift(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - self.center.to(x)) / self.scale
        return self.velocity_scale * self.external(scaled.to(self.center.dtype)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim or x.ndim < 2:
            raise ValueError(f"x: expected particles (..., N, {self.dim}), but got shape {tuple(x.shape)}")
        return self.external_drift(x) + self.interaction(x)

    def sde(self, n_experiments: int = 1):
        """The forecast model :math:`dX = b_\\theta dt + \\sigma dW` as a :class:`torchmf.sde.McKeanVlasovSDE`."""
        from torchmf.sde import McKeanVlasovSDE

        return McKeanVlasovSDE(self.dim, learned_drift=self, diffusion=float(self.sigma), n_experiments=n_experiments)


def transition_nll(model: DriftModel, x: torch.Tensor, x_next: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Mean Euler-Maruyama negative log-likelihood per particle and coordinate."""
    step = dt.reshape(-1, *([1] * (x.ndim - 1))).to(x)
    residual = x_next - x - model(x) * step
    variance = model.sigma ** 2 * step
    return (residual.pow(2) / (2 * variance) + 0.5 * torch.log(2 * math.pi * variance)).mean()


class DriftModule(LightningModule):
    """Lightning wrapper: fits a :class:`DriftModel` by the Euler-Maruyama transition likelihood.

    Arguments are those of :class:`DriftModel` plus ``learning_rate`` and ``weight_decay``.
    """

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 2, interaction_hidden: int = 32,
                 interaction_layers: int = 2, center: Sequence[float] = (0.0, 0.0), scale: float = 1.0,
                 velocity_scale: float = 1.0, interaction_length: float = 1.0, sigma: float = 1.0,
                 learning_rate: float = 3e-3, weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = DriftModel(dim, hidden, layers, interaction_hidden, interaction_layers, center, scale,
                                velocity_scale, interaction_length, sigma)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def forward(self, x):
        return self.model(x)

    def _loss(self, batch, stage: str):
        x, x_next, dt = batch
        loss = transition_nll(self.model, x, x_next, dt)
        self.log(f"{stage}_nll", loss, prog_bar=True, batch_size=x.shape[0])
        if stage == "train":
            self.log("sigma", self.model.sigma.detach(), prog_bar=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_index):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_index):
        return self._loss(batch, "val")

    def test_step(self, batch, batch_index):
        return self._loss(batch, "test")

    def predict_step(self, batch, batch_index):
        return self.model(batch[0])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

    def payload(self) -> dict:
        """A ``weights_only`` checkpoint payload for :func:`build_drift_model`."""
        return {"config": dict(self.model.config, sigma=float(self.model.sigma.detach())),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}


def build_drift_model(payload: dict, manifest: Optional[dict] = None) -> DriftModel:
    """Builder of the pretrained registry: a ready :class:`DriftModel` from a ``weights_only`` payload."""
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError("payload: expected a dict with 'config' and 'state_dict'")
    model = DriftModel(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def drift_model_from_checkpoint(path) -> DriftModel:
    """A :class:`DriftModel` from a ``.pt`` payload of :meth:`DriftModule.payload` or a Lightning ``.ckpt``
    of a :class:`DriftModule` (read with ``weights_only=True``; nothing in the file chooses code)."""
    payload = load_payload(path)
    if isinstance(payload, dict) and "config" in payload and "state_dict" in payload:
        return build_drift_model(payload)
    if not (isinstance(payload, dict) and "state_dict" in payload and "hyper_parameters" in payload):
        raise ValueError(f"--model: {str(path)!r} is neither a DriftModule payload (config, state_dict) nor a "
                         f"Lightning checkpoint of a DriftModule")
    names = set(DriftModel.__init__.__code__.co_varnames[1:DriftModel.__init__.__code__.co_argcount])
    config = {k: v for k, v in payload["hyper_parameters"].items() if k in names}
    state = {k[len("model."):]: v for k, v in payload["state_dict"].items() if k.startswith("model.")}
    model = DriftModel(**config)
    model.load_state_dict(state)
    return model.eval()


class TrajectoryDataModule(LightningDataModule):
    """Pairs of consecutive snapshots from a time window of particle trajectories.

    Arguments:
        path: a Trajectories file (.h5/.npz); if None, ``system`` is simulated.
        system / params: registered system and its parameters (used when ``path`` is None).
        n_particles / n_experiments / seed: sizes and seed of that simulation.
        t_start / t_end: the training window (recorded times inside it are used).
        record_dt: time between the snapshots of the simulation.
        max_particles: keep at most this many particles per snapshot (the first ones; the
            pairwise interaction costs ``O(N^2)`` per snapshot).
        batch_size: snapshot pairs per batch.
        val_fraction: share of pairs held out for validation (seeded split).
    """

    def __init__(self, path: Optional[str] = None, system: Optional[str] = "swarm_ring", params: Optional[dict] = None,
                 n_particles: int = 2000, n_experiments: int = 1, seed: int = 0, t_start: float = 0.0,
                 t_end: float = 1.0, record_dt: float = 0.05, max_particles: int = 400, batch_size: int = 4,
                 val_fraction: float = 0.2):
        super().__init__()
        if path is None and system is None:
            raise ValueError("path: expected a Trajectories file or a system name, but got neither")
        if not t_end > t_start:
            raise ValueError(f"t_end: expected t_end > t_start, but got t_start={t_start}, t_end={t_end}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction: expected a number in [0, 1), but got {val_fraction}")
        self.path, self.system, self.params = path, system, dict(params or {})
        self.n_particles, self.n_experiments, self.seed = n_particles, n_experiments, seed
        self.t_start, self.t_end, self.record_dt = float(t_start), float(t_end), float(record_dt)
        self.max_particles, self.batch_size, self.val_fraction = max_particles, batch_size, val_fraction
        self.train_set = self.val_set = None

    def trajectories(self) -> Trajectories:
        if self.path is not None:
            # the mean-field drift of a snapshot needs every particle of it: lost tracks have no meaning here
            return Trajectories.load(self.path).require_complete("the drift model's snapshot pairs")
        from torchmf import systems

        model = systems.get(self.system, **self.params)
        return model.simulate(n_particles=self.n_particles, n_experiments=self.n_experiments, seed=self.seed,
                              t_end=self.t_end, record_dt=self.record_dt, progress=False)

    def pairs(self):
        data = self.trajectories()
        times = data.times.double()
        keep = ((times >= self.t_start - 1e-6) & (times <= self.t_end + 1e-6)).nonzero().flatten()
        if keep.numel() < 2:
            raise ValueError(f"t_end: the window [{self.t_start}, {self.t_end}] holds fewer than two recorded times")
        positions = data.positions[:, keep, :self.max_particles].float()
        steps = (times[keep][1:] - times[keep][:-1]).float()
        x, x_next = positions[:, :-1].flatten(0, 1), positions[:, 1:].flatten(0, 1)
        dt = steps.repeat(positions.shape[0])
        return x, x_next, dt

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None:
            return
        x, x_next, dt = self.pairs()
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * x.shape[0]))
        val, train = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(x[train], x_next[train], dt[train])
        self.val_set = TensorDataset(x[val], x_next[val], dt[val]) if n_val else TensorDataset(x[:1], x_next[:1], dt[:1])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()
