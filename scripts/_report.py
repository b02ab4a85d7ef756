"""Report convention shared by every scripts/reproduce_*.py and scripts/bench_*.py.

``Report(name, args)`` collects ``settings``, ``metrics`` and ``checks`` and writes
``OUT/<name>.json`` atomically: ``{"name", "device", "torch", "settings", "metrics", "checks"}``.
A check is one acceptance line measured by the script: ``{"name", "value", "target", "pass"}``
(``"pass": None`` with a ``"skipped"`` reason for lines this machine cannot measure).
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchmf._io import write_json  # noqa: E402

__all__ = ["Report", "standard_parser", "device_name"]


def device_name(device=None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def standard_parser(description: str) -> argparse.ArgumentParser:
    """``--out DIR`` (default runs/) and ``--quick``; scripts add their own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="runs", help="output folder (default runs/)")
    parser.add_argument("--quick", action="store_true", help="small sizes, same checks, looser tolerances")
    return parser


class Report:
    def __init__(self, name: str, args=None, device=None):
        self.name = name
        self.out = Path(getattr(args, "out", "runs"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device_name(device)
        self.settings = {"quick": bool(getattr(args, "quick", False))}
        self.metrics = {}
        self.checks = []

    def check(self, name: str, value, target: str, passed, skipped: str = None) -> bool:
        """Record an acceptance line; ``passed=None`` with ``skipped`` for lines not measurable here."""
        entry = {"name": name, "value": value, "target": target, "pass": None if passed is None else bool(passed)}
        if skipped:
            entry["skipped"] = skipped
        self.checks.append(entry)
        status = "SKIP" if passed is None else ("PASS" if passed else "FAIL")
        print(f"[{status}] {name}: {value} (target {target})", flush=True)
        return bool(passed)

    def path(self, filename: str) -> Path:
        """Where a figure of this report goes (beside the JSON)."""
        return self.out / filename

    def write(self) -> Path:
        data = {"name": self.name, "device": self.device, "torch": torch.__version__, "settings": self.settings,
                "metrics": self.metrics, "checks": self.checks}
        path = write_json(self.out / f"{self.name}.json", data)
        print(f"wrote {path}")
        return path
