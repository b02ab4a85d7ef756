"""``torchmf-train`` (also ``python -m trainers``): LightningCLI with fit/validate/test/predict.

Every run is a YAML config under ``trainers/configs/``: ``torchmf-train fit -c trainers/configs/NAME.yaml``
(resume with ``--ckpt_path last``; multi-process with ``--trainer.strategy ddp --trainer.devices N``).
Models and data modules are chosen by ``class_path`` in the config (subclass mode). Bad
configs and user errors (unknown system, missing file, a checkpoint of another model class, a
path with NaN or non-increasing times) print one line and exit with status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _one_line(error: BaseException) -> str:
    # jsonargparse wraps the error a class raised while being built: report the original one
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # jsonargparse nests the cause under its own header: keep the most specific line
    specific = [line for line in lines if ":" in line and not line.startswith(("Parser key", "Problem with given"))]
    return (specific[-1] if specific else lines[0])[:500]


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    class TorchmfCLI(LightningCLI):
        """LightningCLI plus ``threads`` (torch intra-op threads; 1 is fastest for small models on a shared CPU)."""

        def add_arguments_to_parser(self, parser):
            parser.add_argument("--threads", type=Optional[int], default=None,
                                help="torch.set_num_threads for this run (default: torch's choice)")

        def before_instantiate_classes(self):
            config = self.config.get(self.config.get("subcommand")) if "subcommand" in self.config else self.config
            threads = config.get("threads") if config is not None else None
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"threads: expected a positive integer, but got {threads}")
                import torch

                torch.set_num_threads(threads)

        def _parse_ckpt_path(self):
            # LightningCLI would silently switch to the checkpoint's own model class: refuse instead
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path and Path(ckpt_path).is_file():
                import torch

                try:
                    checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
                except Exception as error:
                    raise ValueError(f"ckpt_path: {ckpt_path!r} is not a readable Lightning checkpoint "
                                     f"({type(error).__name__})") from None
                stored = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "")).rsplit(".", 1)[-1]
                wanted = str(self.config[subcommand]["model"].get("class_path", "")).rsplit(".", 1)[-1]
                if stored and wanted and stored != wanted:
                    raise ValueError(f"ckpt_path: the checkpoint was written by {stored}, but the config trains {wanted}")
            return super()._parse_ckpt_path()

    return TorchmfCLI


def main(argv: Optional[List[str]] = None) -> int:
    from jsonargparse import ArgumentError
    from lightning.pytorch import LightningDataModule, LightningModule

    LightningCLI = _cli_class()

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
