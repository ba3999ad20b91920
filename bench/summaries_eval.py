"""Placeholder."""
from typing import Any
def run_summaries(settings: Any, *, log: Any) -> dict[str, Any]:
    return {}
