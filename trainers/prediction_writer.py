"""``PredictionWriter``: what ``torchmf-train predict`` writes (Lightning's ``predict`` alone writes nothing).

Each predict batch's first tensor (the inputs ``x (B, d)``) and the module's prediction (for the
averaged-dynamics modules, the drift ``F(x) (B, d)``) are collected in order and written at the end
of the epoch, atomically, as ``.npz`` (arrays ``x`` and ``prediction``) or ``.csv`` (columns
``x1..xd, prediction1..predictiond``). ``torchmf-train predict`` adds one writing to
``--predictions`` (default ``<trainer.default_root_dir>/predictions.npz``) unless the config has its own.

With ``plot=True`` (the default) and a :class:`~trainers.SlowPathDataModule` (batches
``(x, dx, dt)``, a slow path's transitions), a figure beside the file (same name, ``.png``) shows,
per coordinate, the predicted drift over the data's own estimate: the increments ``dx / dt``
averaged in 30 bins of ``x`` with a 95% band (1.96 standard errors of each bin's mean). A model
whose drift leaves the band where the bins are full does not fit the path.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from torchmf.data.files import atomic_path

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Arguments:
        output: ``.npz`` or ``.csv`` file written at the end of prediction.
    """

    def __init__(self, output: str = "runs/predictions.npz", plot: bool = True):
        super().__init__(write_interval="batch")
        self.output = Path(output)
        if self.output.suffix.lower() not in (".npz", ".csv"):
            raise ValueError(f"output: expected a .npz or .csv file name, but got {output!r}")
        if not isinstance(plot, bool):
            raise TypeError(f"plot: expected a bool, but got {type(plot).__name__}")
        self.plot = plot
        self._inputs: List[torch.Tensor] = []
        self._predictions: List[torch.Tensor] = []
        self._rates: List[torch.Tensor] = []  # dx / dt of (x, dx, dt) batches: the data's drift estimate

    def on_predict_epoch_start(self, trainer, pl_module):
        self._inputs, self._predictions, self._rates = [], [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._inputs.append(inputs.detach().cpu())
        self._predictions.append(prediction.detach().cpu())
        if self._increments(trainer):  # (x, dx, dt): dx / dt is the data's own drift estimate
            dt = batch[2].detach().cpu().double().reshape(-1, *([1] * (inputs.ndim - 1)))
            self._rates.append(batch[1].detach().cpu().double() / dt)

    @staticmethod
    def _increments(trainer) -> bool:
        """Whether predict batches are a slow path's ``(x, dx, dt)`` (other data modules batch otherwise,
        e.g. ``(x, x_next, dt)`` of particle ensembles: no band is drawn for them)."""
        from trainers.slow_path_data import SlowPathDataModule

        return isinstance(getattr(trainer, "datamodule", None), SlowPathDataModule)

    def on_predict_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or not self._predictions:
            return
        inputs = torch.cat(self._inputs).double().numpy()
        predictions = torch.cat(self._predictions).double().numpy()
        inputs = inputs.reshape(inputs.shape[0], -1)
        predictions = predictions.reshape(predictions.shape[0], -1)
        with atomic_path(self.output, suffix=self.output.suffix) as temporary:
            if self.output.suffix.lower() == ".npz":
                with open(temporary, "wb") as handle:
                    np.savez(handle, x=inputs, prediction=predictions)
            else:
                header = [f"x{i + 1}" for i in range(inputs.shape[1])] + \
                         [f"prediction{i + 1}" for i in range(predictions.shape[1])]
                np.savetxt(temporary, np.concatenate([inputs, predictions], 1), delimiter=",",
                           header=",".join(header), comments="")
        figure = None
        if self.plot and len(self._rates) == len(self._predictions):
            rates = torch.cat(self._rates).numpy().reshape(inputs.shape[0], -1)
            figure = drift_band_figure(self.output.with_suffix(".png"), inputs, predictions, rates)
        print(f"wrote {self.output}: {predictions.shape[0]} predictions" + (f" and {figure}" if figure else ""))


def binned_drift(x: np.ndarray, rates: np.ndarray, bins: int = 30):
    """The data's drift estimate along one coordinate: bin centres, mean of ``rates`` per bin and its
    standard error, for bins holding at least 10 transitions. ``x``, ``rates``: ``(B,)``."""
    edges = np.linspace(x.min(), x.max(), bins + 1)
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    centres, means, errors = [], [], []
    for k in range(bins):
        values = rates[index == k]
        if values.size >= 10:  # fewer: no standard error worth drawing
            centres.append(0.5 * (edges[k] + edges[k + 1]))
            means.append(values.mean())
            errors.append(values.std(ddof=1) / np.sqrt(values.size))
    return np.array(centres), np.array(means), np.array(errors)


def drift_band_figure(path: Path, inputs: np.ndarray, predictions: np.ndarray, rates: np.ndarray) -> Path:
    """Per coordinate k: the predicted drift_k against x_k over the binned dx_k/dt with its 95% band."""
    from torchmf.plots import plt, save_figure

    count = min(inputs.shape[1], predictions.shape[1], 4)
    figure, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False, layout="constrained")
    for k, axis in enumerate(axes[0]):
        centres, means, errors = binned_drift(inputs[:, k], rates[:, k])
        axis.fill_between(centres, means - 1.96 * errors, means + 1.96 * errors, color="0.8",
                          label="data: binned dx/dt, 95% band")
        axis.plot(centres, means, "k.", markersize=3)
        order = np.argsort(inputs[:, k])
        style = "C0-" if inputs.shape[1] == 1 else "C0."  # in d > 1 the drift varies with the other coordinates too
        axis.plot(inputs[order, k], predictions[order, k], style, markersize=1, label="predicted drift")
        axis.set_xlabel(f"x{k + 1} (data units)")
        axis.set_ylabel(f"drift {k + 1} (data units / time)")
        axis.legend(fontsize=7)
    return save_figure(figure, path)
