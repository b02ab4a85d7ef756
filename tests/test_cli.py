import subprocess
import sys

import pytest
import yaml

from torchmf import Trajectories
from torchmf.cli import main


def test_simulate_writes_a_loadable_reproducible_file(tmp_path, capsys):
    args = ["simulate", "ou_linear", "--particles", "200", "--t-end", "0.5", "--seed", "3", "--no-progress"]
    assert main(args + ["-o", str(tmp_path / "a.h5")]) == 0
    assert main(args + ["-o", str(tmp_path / "b.h5")]) == 0
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    data = Trajectories.load(tmp_path / "a.h5")
    assert data.positions.shape == (1, 11, 200, 1)
    assert data.meta["seed"] == 3 and data.meta["system"] == "ou_linear"
    assert main(args[:-3] + ["--seed", "4", "--no-progress", "-o", str(tmp_path / "c.h5")]) == 0
    assert Trajectories.load(tmp_path / "c.h5").positions.ne(data.positions).any()


def test_simulate_from_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"system": "double_well", "params": {"a": 0.5}, "particles": 100, "t_end": 0.2,
                                      "record_dt": 0.1, "seed": 1}))
    out = tmp_path / "dw.npz"
    assert main(["simulate", str(recipe), "-o", str(out), "--experiments", "2", "--param", "sigma=0.3",
                 "--no-progress"]) == 0
    data = Trajectories.load(out)
    assert data.positions.shape == (2, 3, 100, 1)
    assert data.meta["params"]["a"] == 0.5 and data.meta["params"]["sigma"] == 0.3


def test_shipped_recipes_are_valid():
    from pathlib import Path

    from torchmf import systems
    from torchmf.commands.simulate import load_recipe

    for path in sorted((Path(__file__).resolve().parents[1] / "datasets").glob("*.yaml")):
        recipe = load_recipe(path)
        systems.get(recipe["system"], **recipe.get("params", {}))


@pytest.mark.parametrize("argv, fragment", [
    (["simulate", "no_such_system"], "name"),
    (["simulate", "ou_linear", "--particles", "0"], "n_particles"),
    (["simulate", "ou_linear", "--param", "a"], "--param"),
    (["simulate", "ou_linear", "--param", "a=-2"], "a"),
    (["simulate", "missing.yaml"], "recipe"),
    (["simulate", "ou_linear", "--dt", "-1"], "dt"),
    (["simulate", "ou_linear", "-o", "out.csv", "--t-end", "0.1"], "--output"),  # refused before the run
])
def test_bad_input_gives_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_bad_recipe_keys(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("system: ou_linear\nparticels: 10\n")
    assert main(["simulate", str(recipe), "--no-progress"]) == 2
    assert "unknown keys" in capsys.readouterr().err


def test_python_dash_m_lists_commands():
    result = subprocess.run([sys.executable, "-m", "torchmf", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("simulate", "report"):
        assert command in result.stdout


def test_report_core_section_quick(tmp_path):
    import json

    assert main(["report", "--out", str(tmp_path), "--quick", "--only", "core", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "report.json").read_text())
    core = summary["sections"]["core"]
    assert core["status"] == "ok"
    assert core["metrics"]["grid_vs_pairwise_relative_l2"] < 1e-2
    for figure in core["figures"]:
        assert (tmp_path / figure).stat().st_size > 1000
