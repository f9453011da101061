"""The core's shape, checked: no import cycle, the bottom layer imports nothing above it, functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "latentsync_core"
MAX_FUNCTION_LINES = 100
# the bottom of the core: plain data and rules, imported by everything, importing nothing above them
BOTTOM = {"latentsync_core.constants": set(), "latentsync_core.errors": set(),
          "latentsync_core.options": {"latentsync_core.constants", "latentsync_core.errors"},
          "latentsync_core.timing": {"latentsync_core.constants", "latentsync_core.errors"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The modules an ``ImportFrom`` may load: the package/module named, and each imported name as a submodule."""
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module -> core modules it imports when it is imported (top-level statements, not function bodies)."""
    files = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in tree.body:
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found = _resolve(module, path.name == "__init__.py", node)
            targets |= {t for t in found if t in files and t != module}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "latentsync_core.options" in graph and "latentsync_core.pipeline" in graph  # the walk found the core
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_bottom_layer_imports_nothing_above_it():
    graph = import_graph()
    for module, allowed in BOTTOM.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"
    # data types sit below the audio package (the old types -> audio cycle)
    assert not any(m.startswith("latentsync_core.audio") for m in graph["latentsync_core.types"])


def test_no_core_function_is_longer_than_100_lines():
    long = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(CORE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + "; ".join(long)


def test_the_checks_see_a_cycle_and_a_long_function(tmp_path, monkeypatch):
    """The walkers above are not blind: a planted cycle and a planted long function are found."""
    import sys

    import pytest

    pkg = tmp_path / "latentsync_core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .a import x\n\ndef f():\n" + "    y = 1\n" * 120)
    monkeypatch.setattr(sys.modules[__name__], "CORE", pkg)
    graph = import_graph()
    assert "latentsync_core.b" in graph["latentsync_core.a"] and "latentsync_core.a" in graph["latentsync_core.b"]
    assert find_cycle(graph) == ["latentsync_core.a", "latentsync_core.b", "latentsync_core.a"]
    with pytest.raises(AssertionError, match="b.py:3 f"):
        test_no_core_function_is_longer_than_100_lines()
