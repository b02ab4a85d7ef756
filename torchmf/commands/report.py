"""Run the main job: a short end-to-end tour of every method on built-in defaults.

Writes OUT/report.md, OUT/report.html (figures inline), OUT/report.json (metrics) and the PNG
figures. Each section comes from a module of torchmf.report; a failing section is reported
in place and makes the command exit non-zero after the others have run.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path

NAME = "report"
HELP = "run the end-to-end demo of every method and write a report with figures"
ORDER = 90


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/report", help="output folder (default runs/report)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only sections whose module name matches")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> int:
    import torch

    from .. import __version__
    from ..data.files import check_output_path, write_json, write_text
    from ..report import sections
    from ..report.render import markdown_to_html

    names = [module.__name__.rsplit(".", 1)[-1] for module in sections()]
    unmatched = [o for o in args.only if not any(o in name for name in names)]
    if unmatched:  # an empty report is a silent wrong answer
        raise ValueError(f"--only: {unmatched} match no section; expected parts of {names}")
    check_output_path("--out", args.out, folder=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = [f"# torchmf report\n\ntorchmf {__version__}, torch {torch.__version__}, "
                f"device {'cuda' if torch.cuda.is_available() else 'cpu'}\n"]
    summary = {"torchmf": __version__, "torch": torch.__version__, "sections": {}}
    failures = 0
    for module in sections():
        name = module.__name__.rsplit(".", 1)[-1]
        if args.only and not any(o in name for o in args.only):
            continue
        print(f"[report] {module.TITLE} ...", flush=True)
        start = time.perf_counter()
        try:
            result = module.run(out, quick=args.quick, progress=not args.no_progress)
            status = "ok"
        except Exception as error:  # a section failing must not hide the others
            failures += 1
            result = {"markdown": f"**This section failed:** `{type(error).__name__}: {error}`\n\n"
                                  f"```\n{traceback.format_exc()}\n```", "figures": [], "metrics": {}}
            status = "failed"
        seconds = time.perf_counter() - start
        markdown.append(f"## {module.TITLE}\n\n{result['markdown']}\n")
        markdown.extend(f"![{figure}]({figure})\n" for figure in result.get("figures", []))
        markdown.append(f"\n_{status}, {seconds:.1f} s_\n")
        summary["sections"][name] = {"title": module.TITLE, "status": status, "seconds": round(seconds, 2),
                                     "metrics": result.get("metrics", {}), "figures": result.get("figures", [])}
        print(f"[report] {module.TITLE}: {status} ({seconds:.1f} s)", flush=True)
    text = "\n".join(markdown)
    write_text(out / "report.md", text)
    write_text(out / "report.html", markdown_to_html(text))
    write_json(out / "report.json", summary)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'report.json'}")
    return 1 if failures else 0
