"""The house rules of docs/architecture.md, read from the code itself (``ast``, nothing imported).

Every module of ``torchmf`` and ``trainers`` sits on one level; an import may point down or sideways,
never up, and the modules' imports (function-level ones included) form no cycle. Modules stay
under 500 lines and classes under 250, so that a newcomer can read one file at a time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torchmf", "trainers")

#: level -> module prefixes (longest prefix wins); the order is the order of the levels, lowest first
LEVELS = {
    "base": ["torchmf._validation", "torchmf._errors", "torchmf._memory", "torchmf._class_path",
             "torchmf.distributed", "torchmf.grid", "torchmf.kernels", "torchmf.smoothing"],
    "data": ["torchmf.data", "torchmf.particles", "torchmf.series", "torchmf.tracks", "torchmf.images"],
    "core": ["torchmf.interaction", "torchmf.sde", "torchmf.metrics", "torchmf.transport", "torchmf.systems",
             "torchmf.recipes", "torchmf.plots", "torchmf.pretrained"],
    "methods": ["torchmf.nudging", "torchmf.lot", "torchmf.averaging", "torchmf.wsindy", "torchmf.variational",
                "torchmf.flows", "torchmf.averaging_plots"],
    "trainers": ["trainers"],
    "commands": ["torchmf.runs", "torchmf.commands", "torchmf.cli", "torchmf.report", "torchmf.__main__"],
}
#: the root package only re-exports Trajectories: it sits with the data
ROOT_LEVELS = {"torchmf": "data"}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250


def module_files():
    """``{module name: path}`` of every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict) -> set:
    """Modules of the packages that ``name`` imports anywhere in its file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # "from package import module" imports the module; "from module import name" the module
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def level_of(module: str) -> int:
    if module in ROOT_LEVELS:
        return list(LEVELS).index(ROOT_LEVELS[module])
    best, best_level = "", None
    for index, prefixes in enumerate(LEVELS.values()):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, best_level = prefix, index
    if best_level is None:
        raise AssertionError(f"{module} has no level: add it to docs/architecture.md and LEVELS here")
    return best_level


def import_graph():
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected_components(graph):
    """Tarjan's algorithm (iterative): the components with more than one module are cycles."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_every_module_has_a_level():
    for module in module_files():
        level_of(module)


def test_no_import_points_up():
    names = list(LEVELS)
    upward = [f"{source} ({names[level_of(source)]}) imports {target} ({names[level_of(target)]})"
              for source, targets in sorted(import_graph().items()) for target in sorted(targets)
              if level_of(target) > level_of(source)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    cycles = [component for component in strongly_connected_components(import_graph()) if len(component) > 1]
    assert not cycles, "\n".join(" <-> ".join(component) for component in cycles)


def test_the_checks_see_a_cycle_and_an_upward_import():
    # the checks have power: a planted cycle and a planted upward import are found
    graph = {"torchmf.grid": {"torchmf.nudging.sde"}, "torchmf.nudging.sde": {"torchmf.grid"}}
    assert strongly_connected_components(graph)[0] == ["torchmf.grid", "torchmf.nudging.sde"]
    assert level_of("torchmf.nudging.sde") > level_of("torchmf.grid")
    with pytest.raises(AssertionError, match="has no level"):
        level_of("torchmf.somewhere_new")


def test_the_resolver_reads_relative_and_function_level_imports(tmp_path):
    module = tmp_path / "torchmf" / "nudging" / "sde.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..grid import Grid\n\ndef f():\n    from .. import runs\n    import trainers.cli\n")
    known = {"torchmf.grid": None, "torchmf.runs": None, "trainers.cli": None, "torchmf.nudging.sde": None}
    assert imported_modules("torchmf.nudging.sde", module, known) == {"torchmf.grid", "torchmf.runs", "trainers.cli"}


def test_modules_and_classes_stay_readable():
    too_long = []
    for name, path in module_files().items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"class {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines "
                                f"(at most {MAX_CLASS_LINES})")
    assert not too_long, "\n".join(too_long)
