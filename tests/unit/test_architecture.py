"""The package's arrows (../ARCHITECTURE.md, "Package layout"): the rooms of ``mlplatform/``
import each other without a circle, counting imports inside functions, and the arrows that must
never be are not there."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mlplatform"
#: Rooms of the ground floor: everything may import them, they import only each other.
GROUND = {"config", "errors", "_fs", "_mlflow", "_ray", "_logs", "_ports", "__version__"}


def room_of(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return parts[0]


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """room -> {imported room: [where, ...]} for every ``mlplatform.*`` import, top-level or in
    a function body."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(package.rglob("*.py")):
        src = room_of(path, package)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = ([f"{node.module}.{a.name}" for a in node.names]
                         if node.module == "mlplatform" else [node.module])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "mlplatform" and len(parts) > 1 and parts[1] != src:
                    graph[src][parts[1]].append(f"{path.relative_to(package.parent)}:"
                                                f"{node.lineno}")
    return graph


def cycles(graph) -> list[list[str]]:
    """Every circle (as the rooms on it), found by depth-first search."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def _where(graph, src: str, dst: str) -> str:
    return f"{src} -> {dst} ({', '.join(graph[src][dst][:3])})"


def test_no_circle_between_rooms():
    graph = import_graph()
    assert {"features", "training", "serving", "project", "models"} <= set(graph)
    found = cycles(graph)
    assert not found, "circles between packages:\n" + "\n".join(
        " -> ".join(c) + ": " + "; ".join(_where(graph, a, b) for a, b in zip(c, c[1:], strict=False))
        for c in found)


def test_the_arrows_that_must_never_be():
    graph = import_graph()
    bad = [_where(graph, src, dst) for src, dsts in graph.items() for dst in dsts
           if dst == "cli"
           or dst == "datasets"            # example data sources: only the examples use them
           or (src == "features" and dst in {"training", "serving", "registry"})
           or (src == "registry" and dst == "serving")
           or (src in {"models", "project"} and dst not in GROUND)
           or (src in GROUND and dst not in GROUND)]
    assert not bad, "arrows that must never be:\n" + "\n".join(bad)


def test_the_checks_see_function_level_imports(tmp_path):
    """The guard itself: a circle closed by an import inside a function is found."""
    pkg = tmp_path / "mlplatform"
    for room, body in {"features": "from mlplatform.errors import X\n",
                       "training": "import mlplatform.features\n",
                       "errors": "def f():\n    from mlplatform.training import y\n"}.items():
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text(body)
    graph = import_graph(pkg)
    assert graph["errors"]["training"] == ["mlplatform/errors/__init__.py:2"]
    assert cycles(graph) == [["errors", "training", "features", "errors"]]
