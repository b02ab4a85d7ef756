"""``PredictionWriter``: what ``torchmf-train predict`` writes (Lightning's ``predict`` alone writes nothing).

Each predict batch's first tensor (the inputs ``x (B, d)``) and the module's prediction (for the
averaged-dynamics modules, the drift ``F(x) (B, d)``) are collected in order and written at the end
of the epoch, atomically, as ``.npz`` (arrays ``x`` and ``prediction``) or ``.csv`` (columns
``x1..xd, prediction1..predictiond``). ``torchmf-train predict`` adds one writing to
``--predictions`` (default ``<trainer.default_root_dir>/predictions.npz``) unless the config has its own.
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

    def __init__(self, output: str = "runs/predictions.npz"):
        super().__init__(write_interval="batch")
        self.output = Path(output)
        if self.output.suffix.lower() not in (".npz", ".csv"):
            raise ValueError(f"output: expected a .npz or .csv file name, but got {output!r}")
        self._inputs: List[torch.Tensor] = []
        self._predictions: List[torch.Tensor] = []

    def on_predict_epoch_start(self, trainer, pl_module):
        self._inputs, self._predictions = [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._inputs.append(inputs.detach().cpu())
        self._predictions.append(prediction.detach().cpu())

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
        print(f"wrote {self.output}: {predictions.shape[0]} predictions")
