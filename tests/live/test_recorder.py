"""What a session says is in the store as it happens, once, whatever repeats."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from live.recorder import SessionRecorder, usage_rows, vendor_of
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
