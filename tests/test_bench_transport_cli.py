"""scripts/bench_transport.py refuses an unknown section name (one line, exit 2) instead of skipping it."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_unknown_section_is_refused_with_the_names_it_accepts(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("_bench_transport_cli", SCRIPTS / "bench_transport.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    with pytest.raises(SystemExit) as stop:
        module.main(["--sections", "familes,peers", "--out", str(tmp_path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--sections" in error and "familes" in error and "scale_families" in error
    assert not any(tmp_path.iterdir())  # nothing was measured or written
