"""The package's import rules, read from its source: layers import downwards only, no module
imports another in a cycle, the algorithm imports no Ray, and no module or class grows past
the size a reader can hold (400-line modules, 200-line classes, 60-line function bodies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "find_ray"

# A module may import modules of a layer at or below its own (the longest prefix names it).
LAYERS = {
    "find_ray.errors": 0,
    "find_ray.images": 0,
    "find_ray.shapes.settings": 0,
    "find_ray.config": 1,
    "find_ray.reward_config": 1,
    "find_ray.shapes": 2,
    "find_ray.backends": 2,
    "find_ray.rewards": 2,
    "find_ray.algo": 3,
    "find_ray.baselines": 3,
    "find_ray.prompts": 4,
    "find_ray.eval": 4,
    "find_ray.runs": 5,
    "find_ray.system": 6,
    "find_ray.bench": 7,
    "find_ray.serve": 7,
    "find_ray.experiments": 7,
    "find_ray.cli": 8,
    "find_ray.__main__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (a lazy import counts)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {  # internal imports only, each resolved to a module of the package
    name: {m for m in imports(path) if m in SOURCES and m != name} for name, path in SOURCES.items()
}


def layer(module: str) -> int:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{module} has no layer: add its package to LAYERS")
    return LAYERS[max(prefixes, key=len)]


def test_layers_import_downwards_only():
    upward = [
        f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})"
        for name, deps in GRAPH.items()
        for dep in deps
        if layer(dep) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep] if dep in path else [name, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])


def test_the_algorithm_and_the_config_import_no_ray():
    """Nothing the algorithm or the config imports, directly or through other modules, is Ray."""
    for root in ("find_ray.algo", "find_ray.config"):
        reached, todo = set(), [n for n in GRAPH if n == root or n.startswith(root + ".")]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(GRAPH[name])
        with_ray = sorted(
            n for n in reached if any(m.split(".")[0] == "ray" for m in imports(SOURCES[n]))
        )
        assert not with_ray, f"{root} reaches Ray through {with_ray}"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_modules_and_classes_stay_small(name):
    source = SOURCES[name].read_text()
    assert len(source.splitlines()) <= 400, f"{name}: over 400 lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= 200, f"{name}.{node.name}: a class of {size} lines"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body  # code, not prose
            size = node.end_lineno - body[0].lineno + 1 if body else 0
            assert size <= 60, f"{name}.{node.name}: a function body of {size} lines"
