"""Every module of the package imports, and no two of them import each other, however indirectly.

The import graph is read from the source with ``ast``: every ``import condconv_nas.x`` and
``from .x import y`` (relative imports resolved), at the top of a module or inside a function (a
late import is how a cycle hides). Imports under ``if TYPE_CHECKING:`` are left out: they never
run. ``import condconv_nas`` staying free of ray and nni is ``test_spec.test_import_is_light``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import condconv_nas
from condconv_nas.extras import EXTRAS

PACKAGE = condconv_nas.__name__
RUNS = f"{PACKAGE}.__main__"  # importing it runs the CLI (its imports are in the graph still)

# cycles allowed to stay, as the set of their modules: a one-line reason each
ALLOWED: dict[frozenset[str], str] = {}


def package_modules() -> dict[str, Path]:
    """Every module and package of condconv_nas, by name, with its source file."""
    names = [PACKAGE] + [
        m.name for m in pkgutil.walk_packages(condconv_nas.__path__, f"{PACKAGE}.")
    ]
    return {name: Path(importlib.util.find_spec(name).origin) for name in names}


def _imports(node: ast.AST):
    """Every import statement in ``node``, at any depth, but those under ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    test = node.test if isinstance(node, ast.If) else None
    if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":
        children = node.orelse
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _imports(child)


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (its source at ``path``) imports."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            # `from pkg import x` imports the module pkg.x when there is one, else a name of pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for target in targets:
            # `import condconv_nas.a.b` names a module; a name past it belongs to that module
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module: its modules
    in import order, the first repeated at the end."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module (by name) of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_cycles_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imported_resolves_relative_late_and_absolute_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from ..c import name\n"
        "import pkg.d.e\n"
        "if TYPE_CHECKING:\n"
        "    from .f import Type\n"
        "def late():\n"
        "    from .g import h\n"
    )
    modules = dict.fromkeys(["pkg", "pkg.sub", "pkg.sub.b", "pkg.c", "pkg.d", "pkg.f", "pkg.sub.g"])
    modules["pkg.sub.mod"] = source
    assert imported("pkg.sub.mod", source, modules) == {"pkg.sub.b", "pkg.c", "pkg.d", "pkg.sub.g"}


@pytest.mark.parametrize("name", sorted(set(package_modules()) - {RUNS}))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:  # a backend's extra (ray, nni) that is not installed
        if (e.name or "").partition(".")[0] not in EXTRAS:
            raise
        pytest.skip(f"{name} needs {e.name}, an extra that is not installed")


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if frozenset(c) not in ALLOWED]
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_allowed_cycles_still_exist():
    """An allowed cycle that was broken comes off the list (none is allowed now: the list stays
    so that one allowed later is checked from the start)."""
    now = {frozenset(c) for c in cycles(import_graph())}
    assert not [sorted(c) for c in ALLOWED if c not in now]
