"""Crash-safe Lightning checkpoints: :class:`AtomicCheckpointIO`, installed on every ``torchmf-train`` run.

Lightning's own writer serialises into memory, then lets ``fsspec`` write a temporary file in the
*system's* temporary folder and move it over the target. When ``TMPDIR`` is on another filesystem
(a tmpfs, the usual cluster layout) that move is a copy into ``last.ckpt`` in place: a kill during
the copy leaves a truncated file, and nothing is fsynced. Here the checkpoint goes through
:func:`torchmf.data.files.atomic_path`: a temporary file *beside* the target, fsync, ``os.replace``
and an fsync of the folder, so ``last.ckpt`` is always the previous whole checkpoint or the new one.

Reading refuses what is not a whole checkpoint (truncated, foreign, pickled code) with one line that
names the file, instead of torch's ``EOFError`` or multi-line unpickling message.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from torchmf.data.files import atomic_path

__all__ = ["AtomicCheckpointIO", "install_atomic_checkpoints"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically and durably; loading without code (``weights_only=True``)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options: AtomicCheckpointIO writes local files only, expected None")
        buffer = io.BytesIO()  # serialise first: a failing torch.save never touches the folder
        torch.save(checkpoint, buffer)
        with atomic_path(Path(path), suffix=".ckpt") as temporary:
            with open(temporary, "wb") as handle:
                handle.write(buffer.getbuffer())

    def load_checkpoint(self, path, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        return read_checkpoint(path)


def read_checkpoint(path) -> dict:
    """The checkpoint dictionary at ``path``, read with ``weights_only=True``.

    Raises ``FileNotFoundError`` or a one-line ``ValueError`` naming ``path`` (truncated, not a
    checkpoint, or holding pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint file {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = "code (a pickle) inside, refused" if "Weights only" in str(error) else "not a torch checkpoint"
        raise ValueError(f"ckpt_path: {str(path)!r} is not a readable Lightning checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        size = path.stat().st_size
        raise ValueError(f"ckpt_path: {str(path)!r} is truncated or corrupt ({size} bytes, {type(error).__name__}); "
                         "resume from an earlier checkpoint or start again") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"ckpt_path: {str(path)!r} is not a Lightning checkpoint (no dictionary inside)")
    return checkpoint


def install_atomic_checkpoints(trainer) -> None:
    """Replace Lightning's default writer by :class:`AtomicCheckpointIO`; a writer the user configured
    (another ``CheckpointIO`` plugin) is kept."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
