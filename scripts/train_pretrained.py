"""Produce the pretrained checkpoints shipped in torchmf/checkpoints/.

    python scripts/train_pretrained.py NAME [--out DIR] [--quick]
    python scripts/train_pretrained.py --list

Each model NAME has a recipe module ``scripts/pretrained_<NAME with '-' as '_'>.py`` defining
``DESCRIPTION`` and ``train(args) -> dict(payload=..., builder="module:function", config={...},
metrics={...})``. This script runs it and writes NAME.pt + NAME.json (config, final metrics,
SHA-256) atomically through :func:`torchmf.pretrained.save`.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _report import standard_parser  # noqa: E402


def recipes():
    return sorted(p.stem[len("pretrained_"):].replace("_", "-") for p in HERE.glob("pretrained_*.py"))


def main(argv=None) -> int:
    parser = standard_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("name", nargs="?", help="model name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the models this script can train")
    parser.add_argument("--directory", default=None, help="where to write NAME.pt/.json (default: torchmf/checkpoints)")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        print("\n".join(recipes()))
        return 0
    if args.name not in recipes():
        print(f"train_pretrained: error: name: expected one of {recipes()}, but got {args.name!r}", file=sys.stderr)
        return 2
    from torchmf import pretrained

    module = importlib.import_module("pretrained_" + args.name.replace("-", "_"))
    result = module.train(args)
    path = pretrained.save(args.name, result["payload"], result["builder"], module.DESCRIPTION, result["config"],
                           result["metrics"], directory=args.directory)
    print(f"wrote {path} and its manifest; metrics: {result['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
