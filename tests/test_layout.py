"""The layers hold: a shared core (`aios`) that imports neither service nor the programs,
two services on it that do not import each other, the programs (`aios_cli`) on top; and
no import cycle anywhere. Imports inside functions count too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("aios", "aios_cli", "gateway", "sidecar", "loadtests", "proto")
# What each layer may import of the project's own packages (proto: generated messages).
ALLOWED = {
    "aios": {"aios", "proto"},
    "gateway": {"aios", "gateway", "proto"},
    "sidecar": {"aios", "sidecar", "proto"},
    "aios_cli": {"aios", "aios_cli", "gateway", "sidecar", "proto"},
    "loadtests": set(PACKAGES),
    "proto": {"proto"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[str]:
    """The project modules ``name`` imports, wherever in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: sorted(set(imports(name, path))) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_layer_imports_only_what_is_below_it(name: str) -> None:
    layer = name.split(".")[0]
    wrong = [t for t in GRAPH[name] if t.split(".")[0] not in ALLOWED[layer]]
    assert not wrong, f"{name} ({layer}) imports {wrong}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in GRAPH[node]:
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walk_sees_the_imports() -> None:
    """The checks above would pass on a walk that found nothing: it finds what we know."""
    assert "aios.errors" in GRAPH["aios.kserve"]
    assert "gateway.service" in GRAPH["aios_cli.cli"]  # imported inside a function
    assert "aios.config" in GRAPH["gateway.quota"]
