"""``torchmf-train`` (also ``python -m trainers``): LightningCLI with fit/validate/test/predict.

Every run is a YAML config under ``trainers/configs/``: ``torchmf-train fit -c trainers/configs/NAME.yaml``
(resume with ``--ckpt_path last``; multi-process with ``--trainer.strategy ddp --trainer.devices N``).
Models and data modules are chosen by ``class_path`` in the config (subclass mode): a config's
``class_path`` imports the named module, which runs its code, so run only configs you trust. A
checkpoint never chooses code: the class comes from the config, and any other class the checkpoint
names must be torchmf's own, named by the config, or given with ``--allow_class`` (checked by its
full dotted path before anything is imported). Checkpoints are written atomically
(:mod:`trainers.checkpoint_io`). Bad
configs and user errors (unknown system, missing file, a checkpoint of another model class, a
path with NaN or non-increasing times) print one line and exit with status 2.
"""
from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")
_CKPT_NAMES = ("last", "best", "hpc")
_CHECKPOINT_LOAD_ERRORS = ("Weights only load failed", "PytorchStreamReader", "central directory", "Unpickl",
                           "pickle data was truncated", "invalid load key")
_DESCRIPTION = ("torchmf-train: Lightning training runs from a YAML config. A config's class_path imports the "
                "named module, which runs its code: use only configs you trust. A checkpoint (--ckpt_path) never "
                "chooses code: its class must be the config's, and other classes it names must be torchmf's own, "
                "named by the config or given with --allow_class.")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _cause(error: BaseException) -> BaseException:
    # jsonargparse wraps the error a class raised while being built: report the original one
    seen = set()
    while error.__cause__ is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__
    return error


def _one_line(error: BaseException) -> str:
    outer = str(error)  # jsonargparse names the option ("Parser key ...") outside the cause
    error = _cause(error)
    text = str(error).strip()
    if not text:
        return type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # jsonargparse nests the cause under its own header: keep the most specific line, named by its key
    specific = [line for line in lines if ":" in line and not line.startswith(("Parser key", "Problem with given"))]
    line = specific[-1] if specific else lines[0]
    key = _PARSER_KEY.search(text) or _PARSER_KEY.search(outer)
    if key and key.group(1).rsplit(".", 1)[-1] not in line:
        line = f"{key.group(1)}: {line}"
    return line[:500]


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    class TorchmfCLI(LightningCLI):
        """LightningCLI plus ``threads`` (torch intra-op threads; 1 is fastest for small models on a shared CPU)."""

        def add_arguments_to_parser(self, parser):
            parser.add_argument("--threads", type=Optional[int], default=None,
                                help="torch.set_num_threads for this run (default: torch's choice)")
            parser.add_argument("--allow_class", type=Optional[List[str]], default=None,
                                help="full dotted paths of classes a checkpoint (--ckpt_path) may name besides "
                                     "torchmf's own and those the config names; importing a class runs its code")
            parser.add_argument("--predictions", type=Optional[str], default=None,
                                help="predict: file (.npz/.csv) the predictions are written to (default "
                                     "<trainer.default_root_dir>/predictions.npz)")

        def before_predict(self):
            # Lightning's predict returns the predictions and writes nothing: add a writer unless one is configured
            from lightning.pytorch.callbacks import BasePredictionWriter

            from trainers.prediction_writer import PredictionWriter

            if any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
                return
            output = self.config["predict"].get("predictions") or \
                str(Path(self.trainer.default_root_dir) / "predictions.npz")
            self.trainer.callbacks.append(PredictionWriter(output))

        def before_instantiate_classes(self):
            config = self.config.get(self.config.get("subcommand")) if "subcommand" in self.config else self.config
            threads = config.get("threads") if config is not None else None
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"threads: expected a positive integer, but got {threads}")
                import torch

                torch.set_num_threads(threads)

        def _set_seed(self):
            # numpy's own message ("-1 is not in bounds") names no option
            subcommand = self.config.get("subcommand")
            seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
            if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= 2 ** 32 - 1:
                raise ValueError(f"seed_everything: expected true, false or an integer in [0, 4294967295], "
                                 f"but got {seed}")
            return super()._set_seed()

        def _parse_ckpt_path(self):
            # LightningCLI would import the class a checkpoint names and build it: the class comes from
            # the config, and every import path in the checkpoint is checked before anything is imported
            from trainers.checkpoint_io import read_checkpoint
            from trainers.checkpoint_trust import checkpoint_hyperparameters

            subcommand = self.config.get("subcommand")
            if not subcommand:
                return
            ckpt_path = self.config[subcommand].get("ckpt_path")
            if ckpt_path is not None:
                _check_ckpt_path(ckpt_path)
            if self.config[subcommand].get("weights_only") is False:
                raise ValueError("weights_only: a checkpoint is data, never code: expected true (the default), "
                                 "but got false")
            if not ckpt_path or not Path(ckpt_path).is_file():
                return  # "last"/"best": Lightning restores weights only, no hyperparameters are read
            model = self.config[subcommand].get("model")
            model = model.as_dict() if hasattr(model, "as_dict") else dict(model or {})
            allowed = self.config[subcommand].get("allow_class") or []
            hyperparameters = checkpoint_hyperparameters(read_checkpoint(ckpt_path), str(ckpt_path), model, allowed)
            if hyperparameters:  # what Lightning does, with the config's class instead of the file's
                update = {subcommand: {"model": {"class_path": model["class_path"], "dict_kwargs": hyperparameters}}}
                self.config = self.parser.parse_object(update, self.config)

        def after_instantiate_classes(self):
            from trainers.checkpoint_io import install_atomic_checkpoints

            if getattr(self, "trainer", None) is not None:
                install_atomic_checkpoints(self.trainer)

        def _run_subcommand(self, subcommand):
            # a corrupt or pickled checkpoint behind "last"/"best" is found only when Lightning
            # loads it: name the resolved file instead of torch's multi-line message
            try:
                return super()._run_subcommand(subcommand)
            except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
                text = str(error)
                if not any(marker in text for marker in _CHECKPOINT_LOAD_ERRORS):
                    raise
                path = getattr(self.trainer, "ckpt_path", None) or self.config[subcommand].get("ckpt_path")
                reason = "code (a pickle) inside, refused" if "Weights only" in text else "corrupt or truncated"
                raise ValueError(f"ckpt_path: {str(path)!r} is not a readable Lightning checkpoint ({reason})") from None

        def _prepare_subcommand_kwargs(self, subcommand):
            # every checkpoint Lightning reads (a local file, "last", "best") is loaded without unpickling code
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if "weights_only" in self._subcommand_method_arguments[subcommand]:
                kwargs["weights_only"] = True
            return kwargs

    return TorchmfCLI


_CLASS_PATH_PROBLEM = re.compile(r"Problem with given class_path '([^']+)':\s*(.+)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


def _import_failure(error: BaseException) -> Optional[str]:
    """One line for a config ``class_path`` whose module does not import (jsonargparse wraps the
    ``ImportError`` in several multi-line errors), or None when ``error`` is something else."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__
    if not any(isinstance(link, ImportError) for link in chain):
        return None
    text = "\n".join(str(link) for link in chain)
    problem = _CLASS_PATH_PROBLEM.search(text)
    key = _PARSER_KEY.search(text)
    where = key.group(1) if key else "class_path"
    reason = next(f"{type(link).__name__}: {link}" for link in chain if isinstance(link, ImportError))
    named = f"the class_path {problem.group(1)!r}" if problem else "a class_path"
    return (f"{where}: {named} does not import ({reason}); install the missing package or put the "
            "module on PYTHONPATH")


def _check_ckpt_path(ckpt_path) -> None:
    """Only a local file or Lightning's own names: a URL (``http://``, ``s3://``, ``registry:``) is
    refused before anything is fetched, since Lightning would download it and cache it for later runs."""
    if not isinstance(ckpt_path, (str, Path)):
        raise TypeError(f"ckpt_path: expected a local file path or one of {list(_CKPT_NAMES)}, "
                        f"but got {type(ckpt_path).__name__}")
    text = str(ckpt_path)
    if text in _CKPT_NAMES:
        return
    if _URL.match(text) or text.startswith("registry"):
        raise ValueError(f"ckpt_path: expected a local file (checkpoints are data, never fetched), but got "
                         f"the remote location {text!r}; download it yourself and pass the local path")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"ckpt_path: expected a checkpoint file, but {text!r} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint file {text!r}")


def main(argv: Optional[List[str]] = None) -> int:
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch import LightningDataModule, LightningModule

    from torchmf._errors import ALLOCATION_PATTERNS, user_message

    LightningCLI = _cli_class()

    no_exit = {"exit_on_error": False}
    parser_kwargs = dict(no_exit, description=_DESCRIPTION,
                         **{name: dict(no_exit, description=_DESCRIPTION) for name in _SUBCOMMANDS})
    try:
        LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     save_config_kwargs={"overwrite": True}, args=argv, auto_configure_optimizers=False,
                     parser_kwargs=parser_kwargs)
    except SystemExit as exit_request:  # --help, or an argparse error that still exits
        return int(exit_request.code or 0) if isinstance(exit_request.code, int) else 2
    except KeyboardInterrupt:
        print("torchmf-train: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        cause = _cause(error)
        if isinstance(cause, ImportError) or _import_failure(error) is not None:
            print(f"torchmf-train: error: {_import_failure(error) or _one_line(cause)}", file=sys.stderr)
            return 2
        # Lightning reports its configuration problems as RuntimeError/MisconfigurationException
        extra = (ArgumentError, MisconfigurationException, RuntimeError, pickle.UnpicklingError)
        message = user_message(cause, extra)
        if message is None:
            raise
        generic = isinstance(cause, (ValueError, TypeError, ArgumentError, MisconfigurationException)) or (
            isinstance(cause, RuntimeError) and not ALLOCATION_PATTERNS.search(str(cause)))
        # jsonargparse's messages span several lines: _one_line keeps the most specific one
        print(f"torchmf-train: error: {_one_line(error) if generic else message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
