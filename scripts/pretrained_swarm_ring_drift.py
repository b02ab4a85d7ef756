"""Recipe of the pretrained model ``swarm-ring-drift`` (run by scripts/train_pretrained.py).

    .venv/bin/python scripts/train_pretrained.py swarm-ring-drift

The biased forecast of the collective-motion nudging benchmark: a :class:`trainers.drift.DriftModel`
(external MLP + radial interaction MLP) fitted by the Euler-Maruyama transition likelihood on the
first second (21 snapshots, 400 fish) of a ``swarm_ring`` run (seed 0), with the settings of
trainers/configs/swarm_ring_drift.yaml. Positions only: the model never sees the velocities, so
it is a first-order caricature of second-order schooling, as in the paper.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

DESCRIPTION = ("Neural mean-field drift (external MLP + radial interaction MLP) of swarm_ring, fitted by the "
               "Euler-Maruyama transition likelihood on t in [0, 1] s; the biased forecast of the nudging "
               "collective-motion benchmark. Positions in pixels, time in seconds.")
CONFIG = Path(__file__).resolve().parents[1] / "trainers" / "configs" / "swarm_ring_drift.yaml"


def train(args) -> dict:
    from lightning.pytorch import Trainer, seed_everything

    from trainers.drift import DriftModule, TrajectoryDataModule

    with open(CONFIG) as handle:
        config = yaml.safe_load(handle)
    epochs = 3 if getattr(args, "quick", False) else config["trainer"]["max_epochs"]
    seed_everything(config["seed_everything"], workers=True)
    module = DriftModule(**config["model"]["init_args"])
    data = TrajectoryDataModule(**config["data"]["init_args"])
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5)
    trainer.fit(module, datamodule=data)
    metrics = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items()}
    payload = module.payload()
    size = sum(v.numel() for v in payload["state_dict"].values())
    return {"payload": payload, "builder": "trainers.drift:build_drift_model",
            "config": {"yaml": str(CONFIG.relative_to(CONFIG.parents[2])), "epochs": epochs,
                       "model": config["model"]["init_args"], "data": config["data"]["init_args"]},
            "metrics": {**metrics, "parameters": size, "torch_threads": torch.get_num_threads()}}
