"""octrain's import graph, read from the source: no circles, no module importing the package root,
and every octrain import naming a module that exists.

Imports inside functions count: they run too, just later, and a circle through one still means two
modules that cannot be understood (or moved) apart. Read with ``ast``, so nothing is imported and a
lazy import cannot hide.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "octrain"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, name: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The dotted names of octrain's modules (or module attributes) this file imports, anywhere in it."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "octrain"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] == "octrain":
                # `from package import module` runs the package's __init__ only as every import of a
                # submodule does (not counted: that would make every package with content a circle);
                # `from module import name` depends on the module itself.
                found |= {f"{source}.{alias.name}" for alias in node.names}
                if not all(f"{source}.{alias.name}" in modules for alias in node.names):
                    found.add(source)
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges between octrain's modules, and the imports that name no module at all."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    unknown = []
    for name, path in modules.items():
        for imported in imported_names(path, name, path.name == "__init__.py", modules):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target:
                unknown.append(f"{name}: {imported}")
            elif target != name:
                graph[name].add(target)
    return graph, unknown


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_circle_and_an_unknown_module() -> None:
    # The checker itself, on a graph with a known circle (a -> b -> c -> a) beside a chain.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_another_that_imports_it_back() -> None:
    graph, _ = import_graph()
    assert len(graph) > 100  # the whole package was read
    assert circles(graph) == []


def test_every_octrain_import_names_a_module_that_exists() -> None:
    _, unknown = import_graph()
    assert unknown == []


def test_no_module_inside_the_package_imports_the_package_root() -> None:
    # octrain/__init__ re-exports the API; a module importing it back closes a circle through it.
    graph, _ = import_graph()
    assert sorted(name for name, targets in graph.items() if "octrain" in targets) == []


@pytest.mark.parametrize("module", ["octrain", "octrain.cli", "octrain.core.layout"])
def test_importing_the_light_modules_does_not_import_torch(module: str) -> None:
    # The CLI's --help and `import octrain` stay quick: torch (and what pulls it in) loads when a
    # command needs a model, which is why some imports sit inside functions.
    code = (
        f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"
