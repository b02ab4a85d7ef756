"""Issue 25: a checkpoint never chooses code.

A crafted checkpoint names a module that would create a marker file when imported; the module lies
on ``sys.path`` (as it does for ``python -m trainers`` run beside it). Every variant is refused with
one line, the marker file is never created and the module never enters ``sys.modules``.
"""
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from torchmf._class_path import BUILTIN_CLASSES, check_allowed, import_subclass, named_class_paths
from torchmf.systems.fastslow import FastSlowSystem

REPOSITORY = Path(__file__).resolve().parents[1]
BASE_PATH = "torchmf.systems.fastslow.FastSlowSystem"

CONFIG = """
seed_everything: 0
model:
  class_path: trainers.AveragedDynamicsModule
  init_args: {{system: fastslow_cubic}}
data:
  class_path: trainers.SlowPathDataModule
  init_args: {{path: {root}/absent.npz}}
trainer:
  accelerator: cpu
  logger: false
  default_root_dir: {root}
"""


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """(module name, marker file): importing the module creates the marker file."""
    name = f"marker_{uuid.uuid4().hex[:12]}"
    marker = tmp_path / "MARKER"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from trainers.averaged import AveragedDynamicsModule as _Base\n"
        "from torchmf.systems.fastslow import CubicFastSlow\n"
        "class AveragedDynamicsModule(_Base):\n    pass\n"
        "class Sys(CubicFastSlow):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def _crafted(tmp_path: Path, hyper_parameters: dict) -> Path:
    path = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": hyper_parameters, "state_dict": {}, "global_step": 0}, path)
    return path


def _run(capsys, tmp_path, *arguments):
    from trainers.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    code = main(["validate", "-c", str(config), *arguments])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("torchmf-train: error:")], err


CRAFTED = {
    "model class of the same last name": lambda m: {"_class_path": f"{m}.AveragedDynamicsModule"},
    "model class in a package": lambda m: {"_class_path": f"{m}.sub.AveragedDynamicsModule"},
    "system class_path": lambda m: {"_class_path": "trainers.AveragedDynamicsModule",
                                    "system": {"class_path": f"{m}.Sys", "init_args": {}}},
    "system as a dotted name": lambda m: {"_class_path": "trainers.averaged.AveragedDynamicsModule",
                                          "system": f"{m}.Sys"},
    "system nested in a list": lambda m: {"theta_init": [f"{m}.Sys"]},
    "Lightning instantiator": lambda m: {"_class_path": f"{m}.AveragedDynamicsModule",
                                         "_instantiator": f"{m}.instantiate"},
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_checkpoint_imports_nothing_and_is_refused_in_one_line(case, tmp_path, marker_module, capsys):
    name, marker = marker_module
    checkpoint = _crafted(tmp_path, CRAFTED[case](name))
    code, errors, err = _run(capsys, tmp_path, "--ckpt_path", str(checkpoint))
    assert code == 2 and len(errors) == 1, err
    assert "nothing was imported" in errors[0] and name in errors[0]
    assert "Traceback" not in err
    assert not marker.exists()
    assert not any(module == name or module.startswith(name + ".") for module in sys.modules)


def test_the_same_checkpoint_is_refused_for_the_api_and_allowed_only_by_full_path(marker_module):
    from trainers.checkpoint_trust import checkpoint_hyperparameters

    name, marker = marker_module
    model = {"class_path": "trainers.AveragedDynamicsModule", "init_args": {"system": "fastslow_cubic"}}
    checkpoint = {"hyper_parameters": {"_class_path": "trainers.averaged.AveragedDynamicsModule",
                                       "system": {"class_path": f"{name}.Sys"}, "hidden": 8}}
    with pytest.raises(ValueError, match=rf"--allow_class {name}\.Sys\)$"):
        checkpoint_hyperparameters(checkpoint, "x.ckpt", model, allowed=[])
    # the last part alone, or another module's class of that name, is not the allowed class
    for wrong in ["Sys", f"other.{name}.Sys", f"{name}.Sys2"]:
        with pytest.raises(ValueError, match="nothing was imported"):
            checkpoint_hyperparameters(checkpoint, "x.ckpt", model, allowed=[wrong])
    # the user's allow-list, or the config naming it, lets it through (still not imported here)
    allowed = checkpoint_hyperparameters(checkpoint, "x.ckpt", model, allowed=[f"{name}.Sys"])
    assert allowed == {"system": {"class_path": f"{name}.Sys"}, "hidden": 8}
    configured = dict(model, init_args={"system": {"class_path": f"{name}.Sys"}})
    assert checkpoint_hyperparameters(checkpoint, "x.ckpt", configured, allowed=[])["hidden"] == 8
    assert not marker.exists() and name not in sys.modules


def test_import_subclass_with_an_allow_list_checks_before_importing(marker_module):
    name, marker = marker_module
    with pytest.raises(ValueError, match=f"^system: the file names the class '{name}.Sys'"):
        import_subclass(f"{name}.Sys", FastSlowSystem, "system", BASE_PATH, allowed=[])
    assert not marker.exists() and name not in sys.modules
    assert import_subclass(f"{name}.Sys", FastSlowSystem, "system", BASE_PATH, allowed=[f"{name}.Sys"]).__name__ == "Sys"
    assert marker.exists()  # allowed: imported, and its code ran, as the docs say


def test_builtin_classes_are_allowed_by_full_path_only():
    check_allowed("trainers.averaged.AveragedDynamicsModule", [], "model", "the file")
    check_allowed("trainers.DriftModule", [], "model", "the file")
    assert "AveragedDynamicsModule" not in BUILTIN_CLASSES
    with pytest.raises(ValueError, match="nothing was imported"):
        check_allowed("evil.trainers.averaged.AveragedDynamicsModule", [], "model", "the file")
    assert named_class_paths({"a": [1, "x.y"], "b": {"c": "plain", "d": "p.q.R"}, "e": "1.5"}) == \
        [("a[1]", "x.y"), ("b.d", "p.q.R")]


@pytest.mark.parametrize("source, kind", [("import nosuchpackage_xyz_25\n", "ModuleNotFoundError"),
                                          ("raise RuntimeError('broken at import')\n", "RuntimeError"),
                                          ("def broken(:\n", "SyntaxError")])
def test_a_module_that_fails_to_import_is_one_line(source, kind, tmp_path, monkeypatch):
    name = f"broken_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=f"^system: .*{name}.*{kind}") as caught:
        import_subclass(f"{name}.Sys", FastSlowSystem, "system", BASE_PATH)
    assert "\n" not in str(caught.value)


def test_cli_model_class_path_whose_module_fails_to_import_is_one_line(tmp_path, monkeypatch, capsys):
    name = f"broken_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("import nosuchpackage_xyz_25\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path).replace("trainers.AveragedDynamicsModule", f"{name}.Model"))
    from trainers.cli import main

    code = main(["fit", "-c", str(config)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchmf-train: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"'{name}.Model' does not import" in errors[0] and "nosuchpackage_xyz_25" in errors[0]


@pytest.mark.slow
def test_python_m_trainers_beside_a_module_of_that_name_runs_nothing(tmp_path):
    """The reproducer of the issue: ``python -m trainers`` puts the current folder on sys.path."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    checkpoint = _crafted(tmp_path, {"_class_path": "evil.AveragedDynamicsModule"})
    (tmp_path / "config.yaml").write_text(CONFIG.format(root=tmp_path))
    result = subprocess.run([sys.executable, "-m", "trainers", "validate", "-c", "config.yaml", "--ckpt_path",
                             str(checkpoint)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "nothing was imported" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_help_says_a_config_class_path_runs_code(capsys):
    from trainers.cli import main

    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "runs its code" in " ".join(out.split()) and "--allow_class" in out


def test_a_pretrained_payload_naming_a_module_imports_nothing(marker_module, tmp_path, monkeypatch):
    """A registry entry whose payload config names a user module (hash correct) is refused before the builder."""
    from torchmf import pretrained

    name, marker = marker_module
    folder = tmp_path / "registry"
    folder.mkdir()
    payload = {"class": "FlowAveragedDrift", "config": {"system": f"{name}.Sys"}, "state_dict": {}}
    pretrained.save("crafted", payload, "torchmf.averaging:build_pretrained", "crafted", {}, {}, directory=folder)
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", folder)
    with pytest.raises(ValueError, match=rf"^name \(system\): the pretrained payload 'crafted' names the class "
                                         rf"'{name}\.Sys'.*nothing was imported"):
        pretrained.load("crafted")
    assert not marker.exists() and name not in sys.modules


def test_allow_class_on_the_command_line_lets_the_named_class_through(tmp_path, marker_module, capsys):
    name, marker = marker_module
    checkpoint = _crafted(tmp_path, {"_class_path": "trainers.AveragedDynamicsModule",
                                     "system": {"class_path": f"{name}.Sys", "init_args": {}}})
    code, errors, err = _run(capsys, tmp_path, "--ckpt_path", str(checkpoint), "--allow_class", f"[{name}.Sys]")
    # allowed: the user's class is imported (its code ran) and the run goes on to the data, which is absent here
    assert marker.exists() and name in sys.modules
    assert code == 2 and len(errors) == 1 and "absent.npz" in errors[0], err
