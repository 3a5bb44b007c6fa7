"""The packages' structure: every module imports on its own, there is no import cycle, and corp's
layers import only downward (shared -> method -> scale -> cli)."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corp", "corp_kernels")

# corp's layers, lowest first: a module may import its own layer and those below it.
CORP_LAYERS = {"corp.models": 0, "corp.outputs": 0, "corp.tasks": 0, "corp.evaluate": 1,
               "corp.builtin": 1, "corp.method": 2, "corp.scale": 3, "corp.cli": 4,
               "corp.__main__": 4}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of our packages that `name` imports anywhere in its body (lazy imports count)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            for alias in node.names:  # `from pkg import sub` imports pkg.sub; else pkg itself
                sub = f"{stem}.{alias.name}"
                targets.add(sub if sub in MODULES else stem)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    for prefix, layer in CORP_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def test_the_graph_sees_lazy_and_relative_imports():
    # The checks below are only as good as this parser: it must see an import inside a function
    # (streaming imports consolidate lazily) and resolve `..` and `from . import x`.
    assert "corp.method.consolidate" in GRAPH["corp.scale.streaming"]
    assert "corp.method.analysis" in GRAPH["corp.cli.experiment"]
    assert "corp_kernels.ops" in GRAPH["corp_kernels"]


def test_no_import_cycles():
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_corp_layers_import_only_downward():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in GRAPH.items() if _layer(m) is not None
              for t in targets if _layer(t) is not None and _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)
    unplaced = [m for m in MODULES if m.startswith("corp.") and _layer(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}"


def test_task_families_do_not_import_the_registry():
    back = [m for m, targets in GRAPH.items()
            if "corp.tasks.registry" in targets and m not in ("corp.tasks",)]
    assert not back, back


def test_the_method_does_not_need_the_command_line():
    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for t in GRAPH[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen
    assert not {m for m in reachable("corp.method") if m.startswith(("corp.cli", "corp.scale"))}


def _import_alone(module: str) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    return module, "" if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


def test_every_module_imports_in_a_fresh_process():
    skip = {"corp.__main__"}  # runs the command line on import
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f"{m}: {err}" for m, err in pool.map(_import_alone,
                                                         sorted(set(MODULES) - skip)) if err]
    assert not failures, "\n".join(failures)
