"""LightningModules of the averaged dynamics (model + loss + optimizer only; data: :mod:`trainers.slow_path_data`).

* :class:`AveragedDynamicsModule` -- point estimates of ``theta``, ``sigma`` and the fast-law flow
  (``density="flow"``), the Gaussian closure (``"gaussian"``) or the black-box MLP drift (``"neural"``).
* :class:`VariationalAveragedDynamicsModule` -- the flow posterior over ``(theta, log sigma)``.

Batches are ``(x (B, d), dx (B, d), dt (B,))`` transitions of one observed slow path. Both
modules log ``train_loss``, ``val_nll`` and, where the system's averaged drift is cheap and the data
came from that system (the datamodule's ``truth``: a recipe, or a torchmf file recording it; never
a user's CSV), ``val_drift_error`` (relative L2 on the 5-95% quantile range).

``likelihood``: ``"path"`` -- every step uses the Euler-Maruyama likelihood of the *whole* training
path through its sufficient statistics on an interpolation grid
(:class:`~torchmf.averaging.PathStatistics`, one slow dimension; the batch only paces the
steps), ``"minibatch"`` -- an unbiased minibatch estimate (any dimension), ``"auto"`` -- ``path``
when ``d = 1``. Why: one observed transition carries about ``dt / sigma^2`` of information, so a
minibatch gradient is mostly noise and Adam random-walks along the poorly determined
directions of ``theta``; the full-path gradient is exact and costs ``n_nodes`` drift evaluations.

No host synchronisation in ``training_step``: the finiteness of the loss is checked (and a
NaN/inf reported as an error) every ``log_every_n_steps`` steps, after the step.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from lightning.pytorch import LightningModule

from torchmf._class_path import split_class_path
from torchmf._validation import check_choice
from torchmf.averaging import (FlowAveragedDrift, NeuralDrift, PathStatistics, VariationalAveragedDrift, drift_error,
                               fit_fast_law)

__all__ = ["AveragedDynamicsModule", "VariationalAveragedDynamicsModule"]

_CLASS_KEY = "torchmf_module_class"
LIKELIHOODS = ("auto", "path", "minibatch")


def _full_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _AveragedBase(LightningModule):
    model: torch.nn.Module

    def _loss(self, x, dx, dt):
        raise NotImplementedError

    def _penalty_only(self) -> bool:
        """True during the first ``penalty_warmup`` fraction of the steps: the fast-law flow learns the
        stationarity condition alone (it does not depend on the data) before the likelihood can pull
        it, with theta, into a mirrored basin (b < 0 with a reflected law, seen on the tilted well)."""
        fraction = float(self.hparams.get("penalty_warmup", 0.0))
        if fraction <= 0 or self.trainer is None:
            return False
        return self.global_step < fraction * max(1, int(self.trainer.estimated_stepping_batches))

    def _anneal(self):
        """Penalty temperature: ``anneal_temperature`` at step 0, linearly down to 1 at ``anneal_fraction`` of training."""
        start = float(self.hparams.get("anneal_temperature", 1.0))
        inner = getattr(self.model, "model", self.model)
        if start == 1.0 or not hasattr(inner, "penalty_temperature"):
            return
        total = max(1, int(self.trainer.estimated_stepping_batches))
        progress = self.global_step / (float(self.hparams.get("anneal_fraction", 0.5)) * total)
        inner.penalty_temperature = 1.0 + (start - 1.0) * max(0.0, 1.0 - progress)

    path_statistics = None

    def _path_nll(self, x, dx, dt):
        """Mean EM negative log-likelihood per transition: whole path (statistics) or minibatch."""
        statistics = self.path_statistics
        if statistics is None:
            return self.model.path_nll(x, dx, dt)
        nodes = statistics.nodes.to(self.model.data_range)
        drift_a, drift_b = self.model.drift_pair(nodes)
        return statistics.mean_nll(drift_a, drift_b, self.model.sigma)

    def training_step(self, batch, batch_index):
        x, dx, dt = batch
        self._anneal()
        loss, parts = self._loss(x, dx, dt)
        self._last_parts = parts
        self.log("train_loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train_{name}", value)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_index):
        # report, never keep training on NaN/inf; checked at the logging cadence to avoid a
        # device-to-host synchronisation every step
        interval = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1))
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and self.global_step % interval == 0 and not bool(torch.isfinite(loss)):
            parts = {name: float(value) for name, value in getattr(self, "_last_parts", {}).items()}
            raise ValueError(f"loss: became {float(loss)} at step {self.global_step} ({parts})")

    def validation_step(self, batch, batch_index):
        x, dx, dt = batch
        self.log("val_nll", self.model.path_nll(x, dx, dt), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_index):
        x, dx, dt = batch
        self.log("test_nll", self.model.path_nll(x, dx, dt), sync_dist=True)

    def predict_step(self, batch, batch_index):
        x = batch[0]
        return self.model.drift(x)

    def on_validation_epoch_start(self):
        inner = getattr(self.model, "model", self.model)
        if hasattr(inner, "penalty_temperature"):
            inner.penalty_temperature = 1.0  # scores always use the model's own tau

    def on_validation_epoch_end(self):
        system = getattr(self.model, "system", None)
        if system is not None and getattr(system, "cheap_averaged_drift", False) and self._truth_known(system):
            self.log("val_drift_error", drift_error(self.model, n_samples=1024), prog_bar=True, sync_dist=True)

    def _truth_known(self, system) -> bool:
        """The data came from ``system`` (the datamodule's ``truth`` names it with the same parameters): only
        then is the system's averaged drift the truth to score against. A user's file has no truth."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        truth = getattr(datamodule, "truth", None)
        if not truth or truth.get("system") != getattr(system, "registered_name", None):
            return False
        built = system.parameters() if hasattr(system, "parameters") else {}
        return all(built.get(key) == value for key, value in truth.get("params", {}).items() if key in built)

    def on_fit_start(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "train_states", None) is not None:
            self.model.set_data_range(datamodule.train_states.to(self.device))
        train_set = getattr(datamodule, "train_set", None)
        if hasattr(self.model, "set_observation_step") and train_set is not None:
            self.model.set_observation_step(train_set.tensors[2])  # for the sigma correction
        self._prefit_fast_law()
        kind = self.hparams.get("likelihood", "auto")
        train_set = getattr(datamodule, "train_set", None)
        use_path = kind == "path" or (kind == "auto" and self.model.dim == 1)
        if use_path and train_set is not None and self.model.dim == 1:
            x, dx, dt = train_set.tensors
            statistics = PathStatistics(x, dx, dt, self.hparams.get("path_nodes", 256)).to(self.device)
            # not a registered submodule: data, not model state (kept out of checkpoints and state dicts)
            object.__setattr__(self, "path_statistics", statistics)
        elif kind == "path":
            raise ValueError("likelihood: 'path' needs one slow dimension and a SlowPathDataModule, "
                             f"but got d = {self.model.dim}")

    def _prefit_fast_law(self):
        """``fast_law_prefit_steps > 0``: fit q_phi to the known fast law first (reverse KL, no data, see
        :func:`~torchmf.averaging.fit_fast_law`) and freeze it; training then moves theta and sigma only.
        Why: q_phi does not depend on the path, and a law pinned to the right wells leaves the
        likelihood no mirrored solution (b < 0 with a reflected law). Skipped on resume (restored)."""
        steps = int(self.hparams.get("fast_law_prefit_steps", 0) or 0)
        if steps <= 0 or not isinstance(self.model, FlowAveragedDrift) or self.global_step > 0:
            return
        fit_fast_law(self.model, steps, self.hparams.penalty_points, temperature=self.hparams.fast_law_temperature,
                     seed=self.hparams.seed)
        self.model.density.requires_grad_(False)

    def _slow_parameters(self):
        """The slow-model parameters (theta, sigma, or the posterior flow over them)."""
        inner = self.model
        if hasattr(inner, "posterior"):
            return list(inner.posterior.parameters())
        return [p for name, p in inner.named_parameters() if name in ("theta", "log_sigma")]

    def configure_optimizers(self):
        # the likelihood's gradient on theta is weak and noisy (Euler increments are mostly noise),
        # so the slow parameters take a larger step than the networks
        rate = self.hparams.learning_rate
        slow = [p for p in self._slow_parameters() if p.requires_grad]
        slow_ids = {id(p) for p in slow}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in slow_ids]
        groups = [{"params": rest, "lr": rate}] if rest else []
        if slow:
            groups.append({"params": slow, "lr": rate * self.hparams.get("slow_learning_rate_factor", 1.0)})
        optimizer = torch.optim.Adam(groups, lr=rate)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=0.05 * rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # refuse checkpoints of another model class with a one-line error instead of a key mismatch dump;
    # the class is compared by its full dotted path (two classes may share their last name)
    def on_save_checkpoint(self, checkpoint):
        checkpoint[_CLASS_KEY] = _full_name(type(self))
        checkpoint["torchmf_model_config"] = getattr(self.model, "config", {})

    def on_load_checkpoint(self, checkpoint):
        written_by = checkpoint.get(_CLASS_KEY)
        # checkpoints before issue 25 stored the last part only
        expected = _full_name(type(self)) if "." in str(written_by) else type(self).__name__
        if written_by != expected:
            raise ValueError(f"ckpt_path: the checkpoint was written by {written_by or 'another model class'}, "
                             f"but the config trains {_full_name(type(self))}")

    def export_payload(self) -> dict:
        """A ``weights_only`` payload for :mod:`torchmf.pretrained` (class name, config, state dict)."""
        state = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
        return {"class": type(self.model).__name__, "config": self.model.config, "state_dict": state}


class AveragedDynamicsModule(_AveragedBase):
    """Point-estimate training: EM negative log-likelihood + ``penalty_weight`` x stationarity penalty.

    Arguments: ``density`` in ``flow``, ``gaussian``, ``neural``; ``penalty_points`` x-points per
    step (uniform over the observed range); ``learning_rate`` (Adam, cosine decay to 5%);
    ``anneal_temperature`` (> 1: the penalty starts with ``tau^2`` times this, decreasing linearly
    to the model's ``tau`` at ``anneal_fraction`` of the steps; helps multimodal fast laws);
    ``slow_learning_rate_factor`` (theta and sigma, or the posterior flow, learn this many times faster);
    ``penalty_warmup`` (fraction of the steps trained on the penalty alone, see :meth:`_penalty_only`);
    ``system``: a registered fast-slow system, ``{class_path: package.module.Class, init_args: {...}}`` for
    a user-defined one (imported, so its code runs; a checkpoint naming it loads only when the config
    names it too or ``--allow_class`` allows it), or None: no system for
    ``density="neural"`` (then ``dim`` gives the slow dimension, default 1, and no truth is scored),
    ``fastslow_cubic`` for the others (their structure needs one);
    ``likelihood`` (``auto``, ``path``, ``minibatch``; see the module docstring) and ``path_nodes``
    (interpolation nodes of the path statistics); ``fast_law_prefit_steps`` (> 0: q_phi fitted first to
    the known fast law by reverse KL with a tempered start ``fast_law_temperature``, then frozen;
    needs the system's ``fast_log_density``); the other arguments build
    :class:`~torchmf.averaging.FlowAveragedDrift` (``test_degree``, ``normalize_penalty``: its
    stationarity penalty) or :class:`~torchmf.averaging.NeuralDrift`, which has no penalty.
    """

    def __init__(self, system: Union[str, dict, None] = None, system_params: Optional[dict] = None,
                 density: str = "flow", hidden: int = 32, layers: int = 1, bins: int = 8, tail_bound: float = 4.0,
                 scale: float = 1.5,
                 n_samples: int = 32, theta_init: Optional[List[float]] = None, sigma_init: float = 1.0,
                 n_fourier: int = 16, test_length: float = 1.0, seed: int = 0, penalty_weight: float = 10.0,
                 penalty_points: int = 128, learning_rate: float = 5e-3, anneal_temperature: float = 1.0,
                 anneal_fraction: float = 0.5, test_kind: str = "fourier", slow_learning_rate_factor: float = 20.0,
                 test_degree: int = 3, normalize_penalty: bool = True, likelihood: str = "auto", path_nodes: int = 256,
                 flow_affine: str = "linear", penalty_warmup: float = 0.0, fast_law_prefit_steps: int = 0,
                 fast_law_temperature: float = 3.0, dim: Optional[int] = None):
        super().__init__()
        check_choice("likelihood", likelihood, LIKELIHOODS)
        self.save_hyperparameters()
        if isinstance(system, dict):  # {class_path, init_args}: a user-defined fast-slow system
            system, system_params = split_class_path(system, system_params)
        if density == "neural":
            from torchmf.averaging.fast_slow_system import fast_system

            known = None if system is None else fast_system(system, system_params)
            self.model = NeuralDrift(known.dim if known is not None else (dim or 1), hidden, sigma_init, seed)
            self.model.system = known  # None: no truth to score against
        else:
            system = "fastslow_cubic" if system is None else system  # the benchmark, the default before issue 15
            self.model = FlowAveragedDrift(system, system_params, density, hidden, layers, bins, tail_bound, scale,
                                           n_samples, theta_init, sigma_init, n_fourier, test_length, seed, test_kind,
                                           test_degree, normalize_penalty, flow_affine)

    def _loss(self, x, dx, dt):
        frozen = isinstance(self.model, FlowAveragedDrift) and not any(
            parameter.requires_grad for parameter in self.model.density.parameters())
        if not isinstance(self.model, FlowAveragedDrift) or self.hparams.penalty_weight == 0 or frozen:
            nll = self._path_nll(x, dx, dt)
            return nll, {"nll": nll}
        penalty = self.model.stationarity_penalty(self.model.penalty_points(self.hparams.penalty_points))
        nll = self._path_nll(x, dx, dt)
        if self._penalty_only():  # 0 * nll keeps every parameter in the graph (DDP expects gradients for all)
            return self.hparams.penalty_weight * penalty + 0.0 * nll, {"penalty": penalty}
        return nll + self.hparams.penalty_weight * penalty, {"nll": nll, "penalty": penalty}


class VariationalAveragedDynamicsModule(_AveragedBase):
    """Variational training: ``-ELBO / n_transitions`` + ``penalty_weight`` x stationarity penalty.

    ``n_transitions`` (the size of the observed training path) is read from the datamodule.
    """

    def __init__(self, system: Union[str, dict] = "fastslow_cubic", system_params: Optional[dict] = None,
                 hidden: int = 32,
                 layers: int = 1, bins: int = 8, tail_bound: float = 4.0, scale: float = 1.5, n_samples: int = 32,
                 theta_init: Optional[List[float]] = None, sigma_init: float = 1.0, n_fourier: int = 16,
                 test_length: float = 1.0, seed: int = 0, prior_theta_std: float = 10.0,
                 prior_log_sigma_std: float = 2.0, posterior_hidden: int = 16, posterior_layers: int = 2,
                 posterior_init_std: float = 0.1, n_parameter_samples: int = 8, penalty_weight: float = 10.0,
                 penalty_points: int = 64, learning_rate: float = 1e-2, anneal_temperature: float = 1.0,
                 anneal_fraction: float = 0.5, test_kind: str = "fourier", slow_learning_rate_factor: float = 5.0,
                 test_degree: int = 3, normalize_penalty: bool = True, likelihood: str = "auto", path_nodes: int = 256,
                 flow_affine: str = "linear", penalty_warmup: float = 0.0):
        super().__init__()
        check_choice("likelihood", likelihood, LIKELIHOODS)
        self.save_hyperparameters()
        if isinstance(system, dict):  # {class_path, init_args}: a user-defined fast-slow system
            system, system_params = split_class_path(system, system_params)
        self.model = VariationalAveragedDrift(
            prior_theta_std, prior_log_sigma_std, posterior_hidden, posterior_layers, posterior_init_std,
            n_parameter_samples, system=system, system_params=system_params, hidden=hidden, layers=layers, bins=bins,
            tail_bound=tail_bound, scale=scale, n_samples=n_samples, theta_init=theta_init, sigma_init=sigma_init,
            n_fourier=n_fourier, test_length=test_length, seed=seed, test_kind=test_kind, test_degree=test_degree,
            normalize_penalty=normalize_penalty, flow_affine=flow_affine)

    def _loss(self, x, dx, dt):
        datamodule = getattr(self.trainer, "datamodule", None)
        n_transitions = getattr(datamodule, "n_train_transitions", None) or x.shape[0]
        negative_elbo = self.model.negative_elbo(x, dx, dt, n_transitions, self.path_statistics)
        if self.hparams.penalty_weight == 0:  # fast-law flow held fixed (e.g. fitted once beforehand)
            return negative_elbo, {"negative_elbo": negative_elbo}
        penalty = self.model.stationarity_penalty(self.model.penalty_points(self.hparams.penalty_points))
        if self._penalty_only():
            return self.hparams.penalty_weight * penalty + 0.0 * negative_elbo, {"penalty": penalty}
        return negative_elbo + self.hparams.penalty_weight * penalty, {"negative_elbo": negative_elbo, "penalty": penalty}


def fit_quietly(module: LightningModule, datamodule, max_steps: int, val_check_interval: Optional[int] = None,
                progress: bool = False, seed: int = 0, **trainer_kwargs) -> LightningModule:
    """Train ``module`` on ``datamodule`` for ``max_steps`` on CPU without checkpoints or loggers (scripts, tests)."""
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(seed, verbose=False)
    options = dict(accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=-1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0 if val_check_interval is None else 1.0)
    if val_check_interval is not None:
        options.update(val_check_interval=val_check_interval, check_val_every_n_epoch=None)
    options.update(trainer_kwargs)
    Trainer(**options).fit(module, datamodule=datamodule)
    return module
