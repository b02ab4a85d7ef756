"""``SlowPathDataModule``: one observed slow path, split in time into train/validation windows.

The path comes from a dataset recipe (``datasets/*.yaml``, simulated on first use and cached in
``datasets/cache/NAME-<recipe hash>.h5``, written atomically) or from the user's file (``path``):
a CSV table (``time`` column and value columns), a plain ``.npz``/``.h5`` (``times`` and ``x``), or a
trajectories file with one particle (experiment ``experiment``); see :func:`torchmf.data.read_series`.
The first ``1 - validation_fraction`` of the transitions train, the rest validate (and test);
``validation_fraction=0`` trains on the whole path (no validation). Prediction serves every
transition of the path. Batches are ``(x (B, d), dx (B, d), dt (B,))``.

``truth``: the registered system (and parameters) that generated the path -- a recipe's, or the one
a torchmf trajectories file records -- else ``None``; the averaged-dynamics modules score against
the true drift only when it matches their model's system.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from torchmf.averaging import path_transitions
from torchmf.data import Trajectories

__all__ = ["SlowPathDataModule", "resolve_file", "cached_recipe_path"]

REPOSITORY = Path(__file__).resolve().parents[1]


def resolve_file(name: str, argument: str) -> Path:
    """``name`` relative to the working directory, else to the repository root; a missing file is a ValueError-like error."""
    path = Path(name)
    for candidate in (path, REPOSITORY / path):
        if candidate.is_file():
            return candidate
    if path.is_dir():  # "does not exist" would mislead: it exists, as a folder
        raise IsADirectoryError(21, f"{argument}: expected a file, but this is a folder", name)
    raise FileNotFoundError(f"{argument}: file {name!r} does not exist")


def cached_recipe_path(recipe: Path, cache_dir: Path) -> Path:
    """Cache file of a recipe: its name plus the hash of its text (an edited recipe is re-simulated)."""
    digest = hashlib.sha256(recipe.read_bytes()).hexdigest()[:12]
    return cache_dir / f"{recipe.stem}-{digest}.h5"


def load_or_simulate(recipe: str, cache_dir: str = "datasets/cache", progress: bool = True) -> Trajectories:
    """The Trajectories of a recipe, simulated and cached atomically on first use."""
    from torchmf.recipes import load_recipe, simulate_recipe

    recipe_path = resolve_file(recipe, "recipe")
    cache = Path(cache_dir)
    if not cache.is_absolute() and not cache.parent.exists():
        cache = REPOSITORY / cache
    target = cached_recipe_path(recipe_path, cache)
    if not target.is_file():
        simulate_recipe(load_recipe(recipe_path), progress=progress).save(target)  # atomic
    return Trajectories.load(target)


class SlowPathDataModule(LightningDataModule):
    """Arguments:
        recipe: dataset recipe YAML (ignored when ``path`` is given).
        path: the user's series instead of a recipe: ``.csv`` (``time_column`` + ``columns``),
            plain ``.npz``/``.h5`` (``times``, ``x``) or a trajectories file with N = 1.
        experiment: which experiment ``m`` of a trajectories file is the observed path.
        validation_fraction: trailing fraction of the path held out in time, in ``[0, 1)``; 0 trains on all.
        time_column, columns: the time and value columns of a CSV table (default ``time`` and the rest).
        batch_size: transitions per batch.
        cache_dir: where simulated recipes are cached.
    """

    def __init__(self, recipe: str = "datasets/fastslow_cubic.yaml", path: Optional[str] = None, experiment: int = 0,
                 validation_fraction: float = 0.2, batch_size: int = 512, cache_dir: str = "datasets/cache",
                 num_workers: int = 0, progress: bool = True, time_column: str = "time",
                 columns: Optional[List[str]] = None):
        super().__init__()
        if path is not None:
            self.source = resolve_file(path, "path")
        else:
            self.source = resolve_file(recipe, "recipe")
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"validation_fraction: expected a number in [0, 1), but got {validation_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, but got {batch_size}")
        self.use_recipe = path is None
        self.experiment = experiment
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.progress = progress
        self.time_column, self.columns = time_column, columns
        self.train_states: Optional[torch.Tensor] = None
        self.n_train_transitions: Optional[int] = None
        self.truth: Optional[dict] = None

    def _series(self):
        """``(values (L, d), times (L,) float64, meta)`` of the observed path."""
        from torchmf.data import read_series

        if self.use_recipe:
            data = load_or_simulate(str(self.source), self.cache_dir, self.progress)
            if data.n_particles != 1:
                raise ValueError(f"recipe: expected one slow path per experiment (N = 1), but got N = {data.n_particles}")
            if not 0 <= self.experiment < data.n_experiments:
                raise ValueError(f"experiment: expected 0 <= experiment < {data.n_experiments}, but got {self.experiment}")
            return data.positions[self.experiment, :, 0], data.times, data.meta
        return read_series(self.source, self.time_column, self.columns, self.experiment)

    def prepare_data(self):
        if self.use_recipe:  # rank 0 simulates and caches; the others read the cache in setup
            self._series()

    def setup(self, stage: Optional[str] = None):
        values, times, meta = self._series()
        system = meta.get("system") if isinstance(meta, dict) else None
        self.truth = {"system": system, "params": dict(meta.get("params") or {})} if system else None
        x, dx, dt = path_transitions(values.float(), times.double())
        dt = dt.float()
        split = int(round((1 - self.validation_fraction) * x.shape[0]))
        if split < 1 or (self.validation_fraction > 0 and split >= x.shape[0]):
            raise ValueError(f"validation_fraction: {self.validation_fraction} leaves an empty window of the "
                             f"{x.shape[0]} transitions")
        self.train_set = TensorDataset(x[:split], dx[:split], dt[:split])
        self.validation_set = TensorDataset(x[split:], dx[split:], dt[split:])
        self.all_transitions = TensorDataset(x, dx, dt)
        self.train_states = x[:split]
        self.n_train_transitions = split

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.validation_set, batch_size=4 * self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        """Every transition of the path, in time order (predictions: the drift at each observed state)."""
        return DataLoader(self.all_transitions, batch_size=4 * self.batch_size, num_workers=self.num_workers)
