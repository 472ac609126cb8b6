"""The layers the code promises (ARCHITECTURE §2, §7; STYLE "A folder is a room"), read from the
import statements with `ast`: no import cycle between modules of libs/fleetloop and services/,
libraries never import a service, and no service package imports another.

Every import in a file counts: at module level, inside a function, and under `if TYPE_CHECKING:`
(an import deferred to break a cycle still ties the two modules together). The generated protobuf
code (libs/fleetloop/v1) is left out. The host's registry (`runtime.SERVICES`) names services by
string on purpose and is not an import.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO_ROOT

GENERATED = REPO_ROOT / "libs" / "fleetloop" / "v1"
# Cycles found and handed to their owner, each the exact set of modules that import each other; the
# test fails on any other cycle, and on this one once it is gone (then delete the entry).
KNOWN_CYCLES: list[set[str]] = []  # cycles tolerated for now, each as its set of module names: none


@dataclass(frozen=True)
class Import:
    """One imported name as written, made absolute: `target` is `a.b` for `import a.b` and `a.b.c`
    for `from a.b import c` (c may be a module or a name in a.b)."""

    importer: str
    target: str
    line: int


@functools.cache
def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of libs/fleetloop and services (a package is its
    __init__.py)."""
    files: dict[str, Path] = {}
    for root, top in ((REPO_ROOT / "libs", "fleetloop"), (REPO_ROOT, "services")):
        for path in sorted((root / top).rglob("*.py")):
            if path.is_relative_to(GENERATED):
                continue
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


@functools.cache
def imports_of(name: str, path: Path) -> tuple[Import, ...]:
    """Every import statement anywhere in the file of module `name`, relative ones made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found += [Import(name, f"{base}.{alias.name}" if base else alias.name, node.lineno) for alias in node.names]
    return tuple(found)


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within `files` only. `a.b.c`
    is the module a.b.c if there is one, else the package a.b it is a name of."""
    graph: dict[str, dict[str, int]] = {name: {} for name in files}
    for name, path in files.items():
        for imp in imports_of(name, path):
            target = imp.target if imp.target in files else imp.target.rpartition(".")[0]
            if target in files and target != name:
                graph[name].setdefault(target, imp.line)
    return graph


def cycle_groups(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of two or more modules that all reach each other (Tarjan's strongly connected
    components), in the order found from the sorted module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def shortest_cycle(group: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle inside `group` through its first module in sorted order, that module first
    and last (breadth first from it, back to it)."""
    start = min(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if start in graph[v]:
            path = [start]
            while v != start:
                path.append(v)
                v = came_from[v]
            return [start, *reversed(path[1:]), start]
        for w in sorted(graph[v]):
            if w in group and w not in came_from and w != start:
                came_from[w] = v
                queue.append(w)
    raise ValueError(f"{sorted(group)} is not a group of modules importing each other")


def describe(group: set[str], graph: dict[str, dict[str, int]], files: dict[str, Path]) -> str:
    """`a.py:12 -> b.py:3 -> a.py`: a cycle of the group, each file with the line of its import of
    the next, then every file of the group when more modules are tied in."""
    cycle = shortest_cycle(group, graph)
    steps = [f"{files[a].relative_to(REPO_ROOT)}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False)]
    text = " -> ".join([*steps, str(files[cycle[0]].relative_to(REPO_ROOT))])
    if len(group) > len(cycle) - 1:
        text += f"\n    (one of {len(group)} modules importing each other: " + \
            ", ".join(str(files[m].relative_to(REPO_ROOT)) for m in sorted(group)) + ")"
    return text


def test_no_import_cycles():
    files = module_files()
    graph = import_graph(files)
    groups = cycle_groups(graph)
    new = [describe(g, graph, files) for g in groups if g not in KNOWN_CYCLES]
    assert not new, "import cycles (file:line of the import of the next):\n  " + "\n  ".join(new)
    gone = [sorted(k) for k in KNOWN_CYCLES if k not in groups]
    assert not gone, f"no longer a cycle, delete it from KNOWN_CYCLES: {gone}"


def test_libraries_never_import_services():
    files = module_files()
    bad = [f"{files[imp.importer].relative_to(REPO_ROOT)}:{imp.line} imports {imp.target}"
           for name, path in files.items() if name.startswith("fleetloop")
           for imp in imports_of(name, path) if imp.target.split(".")[0] == "services"]
    assert not bad, "libs/fleetloop imports services:\n  " + "\n  ".join(bad)


def test_no_service_imports_another_service():
    files = module_files()
    bad = []
    for name, path in files.items():
        parts = name.split(".")
        if parts[0] != "services" or len(parts) < 2:
            continue
        for imp in imports_of(name, path):
            target = imp.target.split(".")
            if target[0] == "services" and len(target) > 1 and target[1] != parts[1]:
                bad.append(f"{path.relative_to(REPO_ROOT)}:{imp.line} imports {imp.target}")
    assert not bad, "a service imports another service:\n  " + "\n  ".join(bad)


def test_the_graph_sees_deferred_imports():
    """The reader is not vacuous: it finds the simulator's parts, the replay map's TYPE_CHECKING
    import of the simulator, and every service's library imports."""
    graph = import_graph(module_files())
    assert "fleetloop.sim.state" in graph["fleetloop.sim.fleet"]
    assert "fleetloop.sim.fleet" in graph["fleetloop.replay.maps"]  # under `if TYPE_CHECKING:`
    assert "fleetloop.sim.fleet" in graph["fleetloop.sim"]  # the package's __init__
    services = [m for m in graph if m.startswith("services.") and m.endswith(".service")]
    assert len(services) >= 6
    for service in services:
        assert any(t.startswith("fleetloop") for t in graph[service]), service


def test_cycle_finder_names_every_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"f": 1}, "f": {"e": 1},
             "g": {"a": 1}}
    assert cycle_groups(graph) == [{"a", "b", "c"}, {"e", "f"}]
    assert shortest_cycle({"a", "b", "c"}, graph) == ["a", "b", "c", "a"]
    assert cycle_groups({"a": {"b": 1}, "b": {}}) == []
    two_ways = {"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {"a": 1}}
    assert shortest_cycle({"a", "b", "c"}, two_ways) == ["a", "c", "a"]


def test_every_import_counts_and_relative_ones_are_made_absolute(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .b import x\n"
        "from .. import top\n"
        "if TYPE_CHECKING:\n    import pkg.c\n"
        "def later():\n    from pkg.d import y\n")
    assert [i.target for i in imports_of("pkg", pkg / "__init__.py")] == ["pkg.b"]
    assert sorted((i.target, i.line) for i in imports_of("pkg.a", pkg / "a.py")) == [
        ("pkg.b.x", 2), ("pkg.c", 5), ("pkg.d.y", 7), ("top", 3), ("typing.TYPE_CHECKING", 1)]
