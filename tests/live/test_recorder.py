"""What a session says is in the store as it happens, once, whatever repeats."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

import store.db as store_db
from live.recorder import SessionRecorder, checkpoints, session_usage, usage_rows, vendor_of
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, TranscriptLine, TurnMetric, UsageRecord

pytestmark = pytest.mark.unit


@pytest.fixture
def session_id(db_url: str) -> str:
    with session_scope(db_url) as db:
        rec = AgentSessionRecord(room="r", status=SessionStatus.ACTIVE)
        db.add(rec)
        db.flush()
        return rec.id


def test_lines_are_visible_before_the_session_closes(db_url: str, session_id: str) -> None:
    """A worker that dies mid-session has already committed every line said so far."""
    rec = SessionRecorder(db_url, session_id)
    rec.add_line(item_id="u1", speaker="user", text="Hello there", started_at=1_700_000_000.0)
    rec.add_line(item_id="a1", speaker="agent", text="Hi! How can I help?", started_at=1_700_000_001.0)
    rec.add_line(item_id="a1", speaker="agent", text="Hi! How can I help?", started_at=1_700_000_001.0)
    rec.flush()
    with session_scope(db_url) as db:  # another connection, recorder still open
        lines = db.scalars(select(TranscriptLine).where(TranscriptLine.session_id == session_id)).all()
        assert [(ln.speaker, ln.text) for ln in lines] == [
            ("user", "Hello there"), ("agent", "Hi! How can I help?")
        ]
    rec.close()


def test_usage_snapshots_never_add_up(db_url: str, session_id: str) -> None:
    rec = SessionRecorder(db_url, session_id)
    rec.set_usage({("local", "tts_characters"): 40.0})
    rec.set_usage({("local", "tts_characters"): 95.0})
    rec.set_usage({("local", "tts_characters"): 95.0})  # repeated report
    rec.set_usage({("local", "tts_characters"): 60.0})  # late, older snapshot
    rec.add_turn(item_id="a1", metrics={"llm_ttft": 0.2, "e2e_latency": 1.5, "tts_ttfb": None})
    rec.add_turn(item_id="a1", metrics={"tts_ttfb": 0.1})
    rec.close()
    with session_scope(db_url) as db:
        usage = db.scalars(select(UsageRecord).where(UsageRecord.session_id == session_id)).all()
        assert [(u.provider, u.metric, u.quantity) for u in usage] == [("local", "tts_characters", 95.0)]
        turns = db.scalars(select(TurnMetric).where(TurnMetric.session_id == session_id)).all()
        assert len(turns) == 1 and turns[0].llm_ttft == 0.2 and turns[0].tts_ttfb == 0.1


def test_finished_session_is_never_reopened(db_url: str, session_id: str) -> None:
    rec = SessionRecorder(db_url, session_id)
    rec.set_status(SessionStatus.ENDED, end_reason="idle")
    rec.set_status(SessionStatus.ACTIVE)
    rec.close()
    with session_scope(db_url) as db:
        row = db.get(AgentSessionRecord, session_id)
        assert row is not None and row.status == SessionStatus.ENDED and row.end_reason == "idle"


def test_usage_rows_map_plugin_providers() -> None:
    from livekit.agents.metrics.usage import LLMModelUsage, STTModelUsage, TTSModelUsage

    rows = usage_rows([
        STTModelUsage(provider="livekit-plugins-assemblyai", model="u", audio_duration=3.5),
        LLMModelUsage(provider="openai", model="gpt", input_tokens=10, output_tokens=4),
        TTSModelUsage(provider="local", model="piper", characters_count=120, audio_duration=6.0),
    ])
    assert rows[("assemblyai", "stt_audio_seconds")] == 3.5
    assert rows[("openai", "llm_output_tokens")] == 4
    assert rows[("local", "tts_characters")] == 120
    assert vendor_of("api.cartesia.ai") == "cartesia" and vendor_of("piper") == "local"


# --------------------------------------------------------------------------- database away


class WriteLock:
    """Another connection holding SQLite's write lock, as a long write transaction does."""

    def __init__(self, db_url: str) -> None:
        self._conn = sqlite3.connect(db_url.split("///", 1)[1], timeout=1, isolation_level=None)

    def __enter__(self) -> WriteLock:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("UPDATE sessions SET room = room")
        return self

    def release(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def __exit__(self, *_: object) -> None:
        self.release()
        self._conn.close()


def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)  # polling interval of a deadline loop


def _lines(db_url: str, session_id: str) -> list[str]:
    with session_scope(db_url) as db:
        return list(db.scalars(
            select(TranscriptLine.item_id)
            .where(TranscriptLine.session_id == session_id)
            .order_by(TranscriptLine.id)
        ).all())


@pytest.mark.sqlite_only
def test_locked_database_loses_no_line_and_keeps_their_order(
    db_url: str, session_id: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store is unavailable (SQLite locked by another writer): every line said meanwhile
    is written, in order, once it is back; usage is not lost either."""
    # A write gives up after the busy timeout: 0.5 s rather than 10 s, or the test waits 10 s
    # for the first refusal. The engine's pooled connections are dropped to take it up.
    monkeypatch.setattr(store_db, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.5)
    store_db.get_engine(db_url).dispose()
    rec = SessionRecorder(db_url, session_id)
    said = [f"item-{i:03d}" for i in range(60)]
    with WriteLock(db_url) as lock:
        for item in said[:30]:
            rec.add_line(item_id=item, speaker="user", text=f"line {item}", started_at=1.7e9)
        rec.set_usage({("local", "tts_characters"): 10.0}, heartbeat=True)
        # The first write gives up waiting on the lock (the busy timeout) and is retried.
        _wait(lambda: rec.failed_attempts >= 1, 30, "a refused write")
        for item in said[30:]:
            rec.add_line(item_id=item, speaker="agent", text=f"line {item}", started_at=1.7e9)
            rec.set_usage({("local", "tts_characters"): 10.0 + len(item)})
        assert _lines(db_url, session_id) == []  # nothing got through the lock
        assert rec.pending >= 60  # held in memory, in order
        lock.release()
        assert rec.flush(timeout=60)
    assert _lines(db_url, session_id) == said
    assert (rec.dropped, rec.refused) == (0, 0)
    assert "store unavailable" in caplog.text and "store is back" in caplog.text
    rec.close()
    with session_scope(db_url) as db:
        usage = db.scalars(select(UsageRecord).where(UsageRecord.session_id == session_id)).all()
        assert [(u.metric, u.quantity) for u in usage] == [("tts_characters", 18.0)]
        row = db.get(AgentSessionRecord, session_id)
        assert row is not None and row.heartbeat_at is not None


@pytest.mark.postgres_only
def test_postgresql_stopped_for_10_s_loses_no_line_and_keeps_their_order(
    db_url: str, session_id: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL is shut down for 10 s mid-session (pooled connections cut, new ones
    refused): the lines said meanwhile wait in memory and are all written, in order, once it
    is started again."""
    from tests.postgres import PostgresServer

    server: PostgresServer = request.getfixturevalue("postgres")
    rec = SessionRecorder(db_url, session_id)
    rec.add_line(item_id="item-000", speaker="user", text="before", started_at=1.7e9)
    assert rec.flush(timeout=30)  # the recorder holds a pooled connection now
    said = ["item-000"]
    pace = threading.Event()  # never set: its timeout is the caller's pace, not a wait on it
    server.shut_down()
    try:
        down_since = time.monotonic()
        n = 1
        while time.monotonic() - down_since < 10.0:  # the outage lasts 10 s
            item = f"item-{n:03d}"
            rec.add_line(item_id=item, speaker="user" if n % 2 else "agent", text=f"line {item}",
                         started_at=1.7e9)
            rec.set_usage({("local", "tts_characters"): float(n)}, heartbeat=True)
            said.append(item)
            n += 1
            pace.wait(0.25)
        assert rec.failed_attempts >= 1
        assert rec.pending >= len(said) - 1  # held in memory, in order
    finally:
        server.start_again()
    assert rec.flush(timeout=60)
    assert _lines(db_url, session_id) == said
    assert (rec.dropped, rec.refused) == (0, 0)
    assert "store unavailable" in caplog.text and "store is back" in caplog.text
    rec.close()
    with session_scope(db_url) as db:
        usage = db.scalars(select(UsageRecord).where(UsageRecord.session_id == session_id)).all()
        assert [(u.metric, u.quantity) for u in usage] == [("tts_characters", float(n - 1))]


@pytest.mark.sqlite_only
def test_waiting_writes_are_bounded_and_refusals_are_logged(
    db_url: str, session_id: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("live.recorder.MAX_PENDING", 5)
    rec = SessionRecorder(db_url, session_id)
    with WriteLock(db_url) as lock:
        for i in range(8):
            rec.add_line(item_id=f"i{i}", speaker="user", text="hello", started_at=1.7e9)
        for n in range(200):  # snapshots coalesce into one waiting write
            rec.set_usage({("local", "stt_audio_seconds"): float(n)}, heartbeat=True)
        assert rec.pending <= 5 + 1
        assert rec.refused >= 2
        assert "write refused" in caplog.text
        lock.release()
        assert rec.flush(timeout=60)
    rec.close()
    kept = _lines(db_url, session_id)
    # in the order said; which ones were refused depends on when the writer took the first
    assert kept == sorted(kept) and len(kept) + rec.refused == 8
    with session_scope(db_url) as db:
        usage = db.scalars(select(UsageRecord).where(UsageRecord.session_id == session_id)).all()
        assert [u.quantity for u in usage] == [199.0]


@pytest.mark.sqlite_only
def test_writes_still_waiting_at_close_are_reported(
    db_url: str, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = SessionRecorder(db_url, session_id)
    with WriteLock(db_url):
        rec.add_line(item_id="late", speaker="user", text="bye", started_at=1.7e9)
        rec.close(timeout=0.5)
        assert rec.dropped == 1
        assert "writes not stored" in caplog.text


async def test_checkpoints_write_usage_and_avatar_seconds_while_running(
    db_url: str, session_id: str
) -> None:
    """What a SIGKILLed worker leaves: the usage of a few seconds ago and its last beat."""
    rec = SessionRecorder(db_url, session_id)
    started = time.time() - 42.0
    task = asyncio.create_task(
        checkpoints(rec, lambda: session_usage(None, ("tavus", started)), interval=0.05)
    )

    def avatar_seconds() -> float:
        with session_scope(db_url) as db:
            row = db.scalar(select(UsageRecord.quantity).where(
                UsageRecord.session_id == session_id, UsageRecord.metric == "avatar_seconds"))
            return float(row or 0.0)

    try:
        deadline = time.monotonic() + 30
        while avatar_seconds() < 42.0:
            assert time.monotonic() < deadline, "no avatar seconds written"
            await asyncio.sleep(0.05)
        first = avatar_seconds()
        while avatar_seconds() <= first:  # it keeps counting
            assert time.monotonic() < deadline, "avatar seconds not updated"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        rec.close()
    with session_scope(db_url) as db:
        row = db.get(AgentSessionRecord, session_id)
        assert row is not None and row.heartbeat_at is not None
