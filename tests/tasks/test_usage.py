"""Usage accounting: snapshots, session costs and daily totals are recomputed, never added."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import DailyUsage, SessionCost, UsageRecord
from tasks.app import AvatarCelery
from tasks.usage import account_session, record_usage
from tests.tasks.conftest import WorkerProcess, wait_for
from tests.tasks.helpers import new_session

DAY = date(2025, 3, 1)
START = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
PRICES = {
    "openai.llm_input_tokens": 0.001,
    "openai.llm_output_tokens": 0.002,
    "tavus.avatar_seconds": 0.01,
    "livekit.room_minutes": 0.5,
}


@pytest.fixture
def priced(settings: Settings) -> Settings:
    return load_settings(
        db={"url": settings.db.url}, pricing={"prices": PRICES}, _env_file=None
    )


def ended_session(settings: Settings, minutes: float = 4.0, start: datetime = START) -> str:
    return new_session(
        settings, started_at=start, ended_at=start + timedelta(minutes=minutes), status="ended"
    )


def daily(settings: Settings, day: date = DAY) -> dict[tuple[str, str], tuple[float, float, int]]:
    with session_scope(settings.db.url) as db:
        rows = db.scalars(select(DailyUsage).where(DailyUsage.day == day)).all()
        return {(r.provider, r.metric): (round(r.quantity, 6), round(r.cost, 6), r.sessions)
                for r in rows}


@pytest.mark.unit
def test_record_usage_keeps_the_largest_snapshot(priced: Settings) -> None:
    sid = ended_session(priced)
    with session_scope(priced.db.url) as db:
        record_usage(db, sid, "openai", "llm_input_tokens", 100)
        record_usage(db, sid, "openai", "llm_input_tokens", 250)
        record_usage(db, sid, "openai", "llm_input_tokens", 250)  # repeated
        record_usage(db, sid, "openai", "llm_input_tokens", 200)  # late, older snapshot
    with session_scope(priced.db.url) as db:
        rows = db.scalars(select(UsageRecord).where(UsageRecord.session_id == sid)).all()
        assert [(r.provider, r.metric, r.quantity) for r in rows] == [
            ("openai", "llm_input_tokens", 250.0)
        ]
    with session_scope(priced.db.url) as db, pytest.raises(ValueError):
        record_usage(db, sid, "openai", "llm_input_tokens", -1)


@pytest.mark.unit
def test_account_twice_gives_the_same_totals(priced: Settings) -> None:
    a = ended_session(priced, minutes=4)
    b = ended_session(priced, minutes=2)
    with session_scope(priced.db.url) as db:
        record_usage(db, a, "openai", "llm_input_tokens", 1000)
        record_usage(db, a, "openai", "llm_output_tokens", 100)
        record_usage(db, a, "tavus", "avatar_seconds", 240)
        record_usage(db, b, "openai", "llm_input_tokens", 500)
        record_usage(db, b, "local", "tts_characters", 900)  # not in the price table: free

    for _ in range(2):
        for sid in (a, b, a):
            with session_scope(priced.db.url) as db:
                account_session(db, priced, sid)

    totals = daily(priced)
    assert totals == {
        ("livekit", "room_minutes"): (6.0, 3.0, 2),
        ("local", "tts_characters"): (900.0, 0.0, 1),
        ("openai", "llm_input_tokens"): (1500.0, 1.5, 2),
        ("openai", "llm_output_tokens"): (100.0, 0.2, 1),
        ("tavus", "avatar_seconds"): (240.0, 2.4, 1),
    }
    with session_scope(priced.db.url) as db:
        costs = db.scalars(select(SessionCost).where(SessionCost.session_id == a)).all()
        assert len(costs) == 4 and {c.day for c in costs} == {DAY}
        assert round(sum(c.cost for c in costs), 6) == 1.0 + 0.2 + 2.4 + 2.0


@pytest.mark.unit
def test_late_usage_is_counted_once_after_reaccounting(priced: Settings) -> None:
    sid = ended_session(priced, minutes=0)
    with session_scope(priced.db.url) as db:
        record_usage(db, sid, "openai", "llm_output_tokens", 100)
    with session_scope(priced.db.url) as db:
        account_session(db, priced, sid)
    with session_scope(priced.db.url) as db:  # the worker's final snapshot arrives late
        record_usage(db, sid, "openai", "llm_output_tokens", 150)
        record_usage(db, sid, "openai", "llm_output_tokens", 100)
    for _ in range(2):
        with session_scope(priced.db.url) as db:
            account_session(db, priced, sid)
    assert daily(priced)[("openai", "llm_output_tokens")] == (150.0, 0.3, 1)


@pytest.mark.unit
def test_open_session_has_no_room_minutes_yet(priced: Settings) -> None:
    sid = new_session(priced, started_at=START)
    with session_scope(priced.db.url) as db:
        result = account_session(db, priced, sid)
    assert result is not None and result["lines"] == 0
    assert ("livekit", "room_minutes") not in daily(priced)


@pytest.mark.unit
def test_missing_session(priced: Settings) -> None:
    with session_scope(priced.db.url) as db:
        assert account_session(db, priced, "nope") is None


@pytest.mark.integration
def test_account_usage_through_worker_twice(
    sender: AvatarCelery, task_settings: Settings, celery_worker: WorkerProcess
) -> None:
    day = date(2024, 1, 2)  # a day no other test uses
    start = datetime(2024, 1, 2, 8, 0, tzinfo=UTC)
    sid = ended_session(task_settings, minutes=10, start=start)
    with session_scope(task_settings.db.url) as db:
        record_usage(db, sid, "openai", "llm_input_tokens", 2_000_000)
    results = [
        sender.send_task("tasks.usage.account_usage", args=(sid,)) for _ in range(3)
    ]  # repeated delivery, two of them concurrently

    def done() -> bool:
        log = celery_worker.log_text()
        return all(f"account_usage[{r.id}] succeeded" in log for r in results)

    wait_for(done, timeout=60, what="three account_usage runs")
    price = task_settings.pricing.price("openai", "llm_input_tokens")
    room = task_settings.pricing.price("livekit", "room_minutes")
    totals = daily(task_settings, day)
    assert totals[("openai", "llm_input_tokens")] == (2_000_000.0, round(2_000_000 * price, 6), 1)
    assert totals[("livekit", "room_minutes")] == (10.0, round(10 * room, 6), 1)
