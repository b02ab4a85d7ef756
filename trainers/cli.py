"""``torchmf-train`` (also ``python -m trainers``): LightningCLI with fit/validate/test/predict.

Every run is a YAML config under ``trainers/configs/``: ``torchmf-train fit -c trainers/configs/NAME.yaml``.
Models and data modules are chosen by ``class_path`` in the config (subclass mode). Bad
configs and user errors print one line and exit with status 2.
"""
from __future__ import annotations

import sys
from typing import List, Optional

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    try:
        LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     save_config_kwargs={"overwrite": True}, args=argv, auto_configure_optimizers=False)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"torchmf-train: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
