"""Benchmarks stand on their own: they import the service and their own helpers, never tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_benchmarks_import_nothing_from_tests() -> None:
    sources = sorted(BENCH.rglob("*.py"))
    assert sources, f"no benchmark sources under {BENCH}"
    offenders = [
        f"{path.relative_to(BENCH.parent)} imports {module}"
        for path in sources
        for module in _imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert not offenders, "bench/ must not depend on tests/: " + "; ".join(offenders)
