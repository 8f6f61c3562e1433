"""The package's layering, read from its imports (lazy ones inside functions
included): no cycles between its parts, and the tooling (benchmarks, the
command line) on top, where nothing in the library reaches it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamcascade"
TOOLING = {"streamcascade.benchtools", "streamcascade.cli", "streamcascade.__main__"}


def _part(module: str) -> str:
    """A module's part: `streamcascade.sandbox.runner` is `streamcascade.sandbox`."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("streamcascade.") and _part(name) != _part(module):
                    graph[_part(module)].add(_part(name))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_parts_import_each_other_without_a_cycle() -> None:
    graph = _imports()
    assert len(graph) > 10
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_library_never_reaches_the_tooling() -> None:
    graph = _imports()
    reaching = sorted(part for part, targets in graph.items()
                      if part not in TOOLING and targets & TOOLING)  # fmt: skip
    assert reaching == []


def test_a_cycle_is_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
