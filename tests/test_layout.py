"""The layout shows the design: no import cycles, domains apart, the consumer side light.

The import graph is read from the sources (every `import` / `from ... import`, at any
depth, lazy ones included), so a cycle hidden in a function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("schemas", "tasks", "flows", "infra", "clip_curate")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: modules of this project it imports}."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if (ROOT / pkg).exists()]
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_domains_keep_apart():
    """video never imports pool (and the reverse); tasks never import flows or infra;
    the shared layers (io, errors, stats, publish) import no domain."""
    graph = import_graph()
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            if mod.startswith("tasks.video") and dep.startswith("tasks.pool"):
                bad.append((mod, dep))
            if mod.startswith("tasks.pool") and dep.startswith("tasks.video"):
                bad.append((mod, dep))
            if mod.startswith(("tasks", "schemas")) and dep.startswith(("flows", "infra")):
                bad.append((mod, dep))
            shared = ("tasks.io", "tasks.errors", "tasks.stats", "tasks.cancel", "tasks.publish")
            domains = ("tasks.pool", "tasks.video", "tasks.metaclip", "tasks.model")
            if mod.startswith(shared) and dep.startswith(domains):
                bad.append((mod, dep))
    assert bad == []


def test_cycle_finder_finds_a_cycle():
    """The check above can fail: a planted cycle is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
