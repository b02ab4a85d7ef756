"""``torchmf-train`` (also ``python -m trainers``): LightningCLI with fit/validate/test/predict.

Every run is a YAML config under ``trainers/configs/``: ``torchmf-train fit -c trainers/configs/NAME.yaml``
(resume with ``--ckpt_path last``; multi-process with ``--trainer.strategy ddp --trainer.devices N``).
Models and data modules are chosen by ``class_path`` in the config (subclass mode). Bad
configs and user errors (unknown system, missing file, a checkpoint of another model class, a
path with NaN or non-increasing times) print one line and exit with status 2.
"""
from __future__ import annotations

import sys
from typing import List, Optional

__all__ = ["main"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # jsonargparse nests the cause under its own header: keep the most specific line
    specific = [line for line in lines if ":" in line and not line.startswith(("Parser key", "Problem with given"))]
    return (specific[-1] if specific else lines[0])[:500]


def main(argv: Optional[List[str]] = None) -> int:
    from jsonargparse import ArgumentError
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    no_exit = {"exit_on_error": False}
    parser_kwargs = dict(no_exit, **{name: dict(no_exit) for name in _SUBCOMMANDS})
    try:
        LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     save_config_kwargs={"overwrite": True}, args=argv, auto_configure_optimizers=False,
                     parser_kwargs=parser_kwargs)
    except SystemExit as exit_request:  # --help, or an argparse error that still exits
        return int(exit_request.code or 0) if isinstance(exit_request.code, int) else 2
    except (ValueError, TypeError, FileNotFoundError, KeyError, ArgumentError, RuntimeError) as error:
        print(f"torchmf-train: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
