"""A usage reporter run in a separate process by the race tests (kept light to import)."""

from __future__ import annotations

from typing import Any

from store.db import session_scope
from store.writes import record_usage


def report_usage(url: str, sid: str, i: int, procs: int, gate: Any) -> None:
    """One reporting process (a live worker): cumulative snapshots, interleaved with others."""
    gate.wait(60)
    for step in range(30):
        with session_scope(url) as db:
            record_usage(db, sid, "local", "stt_audio_seconds", float(step * procs + i))
