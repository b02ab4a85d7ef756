"""The ``torchmf`` command (``python -m torchmf`` is the same).

Sub-commands live one per module in :mod:`torchmf.commands`; each module defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and is discovered here. Bad input
(every user-caused error of :data:`torchmf._errors.USER_ERRORS`: bad values, missing or malformed
files, YAML errors, requests too large for memory) is printed as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]

from ._errors import USER_ERRORS, user_message  # noqa: F401  (USER_ERRORS: the shared list, re-exported)


def _command_modules():
    from . import commands

    modules = [importlib.import_module(f"{commands.__name__}.{info.name}") for info in pkgutil.iter_modules(commands.__path__)]
    return sorted((m for m in modules if hasattr(m, "NAME")), key=lambda m: getattr(m, "ORDER", 50))


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _OneLineParser(prog="torchmf", description="Mean-field particle dynamics: simulate, nudge, "
                                     "accelerate (LOT), identify (WSINDy) and report.")
    parser.add_argument("--version", action="version", version=f"torchmf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in _command_modules():
        # the docstring and EPILOG (examples) keep their line breaks: example blocks stay blocks
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                                    epilog=getattr(module, "EPILOG", None),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"torchmf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"torchmf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
