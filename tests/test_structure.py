"""The package's shape: no import cycle between the modules of ``hubrl``, ``hubrl.agents`` and ``hubrl.envs``.

The import graph is read from the source (``ast``), not by importing: every ``import`` and
``from ... import`` statement counts, wherever it is — at the top, inside a function (a lazy
import is still a dependency) or under ``if TYPE_CHECKING:`` (a type the module needs is one too).
An edge goes to the most specific module the statement names (``from hubrl.grid import X`` ->
``hubrl.grid``; ``from hubrl import stats`` -> ``hubrl.stats``). A cycle means two modules each
need the other: one of them holds a piece that belongs to a third module, or to the other one.

Run as a script (``python tests/test_structure.py``) to print the cycles, if any.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hubrl", "agents", "envs")
INSTALLED_AS = {"agents": "hubrl.agents", "envs": "hubrl.envs"}  # repository folder -> package (pyproject.toml)


def module_name(path: Path, root: Path) -> str:
    """``hubrl/report.py`` -> ``hubrl.report``; ``envs/__init__.py`` -> ``hubrl.envs`` (:data:`INSTALLED_AS`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    parts[0] = INSTALLED_AS.get(parts[0], parts[0])
    return ".".join(parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Candidate module names of one import statement, most specific first for each name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against this module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """``module -> modules it imports`` over the ``.py`` files of ``packages`` under ``root``."""
    files = {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            candidates = _imported(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                # ``from a.b import c``: the submodule a.b.c when it is one, else a.b
                base = candidates[-1]
                targets = {c if c in files else base for c in candidates[:-1]}
            else:
                targets = set(candidates)
            for target in targets:
                # the most specific internal module the name lies in (``import hubrl.envs.games.x`` -> hubrl.envs.games)
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each module of one reaches every
    other through imports), sorted (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: one per :func:`tangles` component, as a shortest closed path
    ``[a, b, ..., a]`` from its first module."""
    return [_cycle_through(graph, component) for component in tangles(graph)]


def _cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest closed path from the component's first module back to itself, inside the component."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")  # pragma: no cover


def _describe(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{' -> '.join(_cycle_through(graph, c))}   (modules in this tangle: {', '.join(c)})"
                     for c in tangles(graph))


def test_no_import_cycles():
    graph = import_graph()
    assert not tangles(graph), (
        "import cycles (every import counts, function-level and TYPE_CHECKING ones too):\n" + _describe(graph))


def test_graph_sees_the_package():
    """The graph is not trivially empty: it knows modules and their lazy imports."""
    graph = import_graph()
    assert {"hubrl.report", "hubrl.benchmark", "hubrl.agents", "hubrl.envs.games"} <= set(graph)
    assert "hubrl.agents.presets" in graph["hubrl.agents"] and "hubrl.envs.games" in graph["hubrl.envs.atari"]
    assert "hubrl.grid" in graph["hubrl.benchmark"] and "hubrl.grid" in graph["hubrl.report"]


def test_cycles_are_found(tmp_path):
    """A cycle through a function-level import, a TYPE_CHECKING import, a relative import and
    ``from package import module`` is found; an acyclic graph gives none."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import h\n")
    (package / "c.py").write_text("from pkg import a\nimport os\n")
    (package / "d.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert tangles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (package / "c.py").write_text("import os\n")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


if __name__ == "__main__":
    modules = import_graph()
    print(_describe(modules) or "no import cycle")
    raise SystemExit(1 if tangles(modules) else 0)
