"""The shape of the house: which top-level package may import which.

Built from the source (every ``import`` statement, function-level ones included), so a new
import that closes a loop between packages fails here, naming the files.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "engines", "store", "live", "tasks", "web", "cli", "bench", "fakes")


@functools.cache
def imported_modules(path: Path) -> tuple[str, ...]:
    """Every module one file imports by absolute name (parsed once per run: the tests below
    each walk the whole source)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return tuple(modules)


def import_graph(packages: tuple[str, ...] = (*PACKAGES, "tests")) -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in packages and top != pkg:
                    graph[pkg][top].append(str(path.relative_to(ROOT)))
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = import_graph(PACKAGES)
    edges = {pkg: set(targets) for pkg, targets in graph.items()}
    cycle = find_cycle(edges)
    if cycle:
        steps = [
            f"{a} -> {b} ({', '.join(sorted(set(graph[a][b]))[:3])})"
            for a, b in itertools.pairwise(cycle)
        ]
        pytest.fail("import cycle between packages: " + "; ".join(steps))


def test_the_contract_and_catalogue_depend_on_nothing_of_ours() -> None:
    """config/ is what every process shares: it imports no other package of ours."""
    graph = import_graph(PACKAGES)
    assert dict(graph["config"]) == {}
    assert "tasks" not in graph["live"], graph["live"]["tasks"]
    assert "live" not in graph["tasks"], graph["tasks"]["live"]


def test_the_engines_depend_on_the_settings_alone() -> None:
    """engines/ is shared by the live worker and the Celery summariser: it imports config and
    third-party libraries, never live, tasks or LiveKit."""
    graph = import_graph(PACKAGES)
    assert set(graph["engines"]) <= {"config"}, dict(graph["engines"])
    livekit = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "engines").rglob("*.py"))
        if "livekit" in {m.split(".")[0] for m in imported_modules(path)}
    ]
    assert not livekit, livekit


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_benchmarks_import_nothing_from_tests() -> None:
    graph = import_graph((*PACKAGES, "tests"))
    assert "tests" not in graph["bench"], sorted(set(graph["bench"]["tests"]))


def test_the_wire_fakes_stand_apart() -> None:
    """fakes/ (vendors' wire protocols, for tests and benchmarks) plays the vendor, never the
    product: it may read the configuration's names, nothing else of ours."""
    graph = import_graph((*PACKAGES, "tests"))
    assert set(graph["fakes"]) <= {"config"}, {k: sorted(set(v)) for k, v in graph["fakes"].items()}
