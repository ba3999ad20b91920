"""Races on the shared database, run by several threads at once, each on its own connection.

They run on SQLite (one writer at a time, a busy timeout) and, with `--db postgresql` (as
`make test` runs them), on a real PostgreSQL server, where the writes really overlap: the
upsert, the advisory lock of the daily totals, the provisioning claim and the webhook's
de-duplication are what keeps the numbers exact there.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import AgentSessionRecord, DailyUsage, UsageRecord, WebhookEvent
from tasks.app import AvatarCelery, make_celery
from tasks.provisioning import claim_for_provisioning
from tasks.usage import account_session, record_usage
from tasks.webhooks import handle_livekit_webhook
from tests.store.reporter import report_usage
from tests.tasks.helpers import new_session, room_event, signed_webhook

pytestmark = pytest.mark.unit
THREADS = 8
T = TypeVar("T")


def at_once(n: int, work: Callable[[int], T]) -> list[T]:
    """Run `work(0..n-1)` on n threads released together; re-raise the first failure."""
    gate = threading.Barrier(n, timeout=30)

    def run(i: int) -> T:
        gate.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def retried(work: Callable[[], T], attempts: int = 20) -> T:
    """What the Celery task's autoretry does: a lost race or a deadlock is tried again."""
    for attempt in range(attempts):
        try:
            return work()
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def test_concurrent_usage_snapshots_keep_the_largest(settings: Settings) -> None:
    """Many reporters, one (session, provider, metric) key, first insert included."""
    sid = new_session(settings)
    metrics = ("stt_audio_seconds", "llm_input_tokens", "tts_characters")

    def report(i: int) -> None:
        for step in range(20):
            for metric in metrics:
                with session_scope(settings.db.url) as db:
                    # interleaved: thread i reports i, i+8, i+16, ... (cumulative snapshots)
                    record_usage(db, sid, "openai", metric, float(step * THREADS + i))

    at_once(THREADS, report)
    with session_scope(settings.db.url) as db:
        rows = db.execute(
            select(UsageRecord.metric, UsageRecord.quantity).where(UsageRecord.session_id == sid)
        ).all()
    assert sorted(rows) == sorted((m, float(19 * THREADS + THREADS - 1)) for m in metrics)


def test_processes_reporting_usage_at_once_keep_the_largest(settings: Settings) -> None:
    """Separate processes (each its own engine and pool), as live workers report."""
    sid = new_session(settings)
    ctx = multiprocessing.get_context("spawn")
    procs = 4
    gate = ctx.Barrier(procs)
    workers = [ctx.Process(target=report_usage, args=(settings.db.url, sid, i, procs, gate))
               for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * procs
    with session_scope(settings.db.url) as db:
        rows = db.scalars(select(UsageRecord.quantity).where(UsageRecord.session_id == sid)).all()
    assert rows == [float(29 * procs + procs - 1)]


def test_concurrent_accounting_gives_exact_daily_totals(settings: Settings) -> None:
    """Sessions of one day priced at once (twice each): the day's totals are exact sums."""
    priced = load_settings(db={"url": settings.db.url},
                           pricing={"prices": {"openai.llm_input_tokens": 0.001,
                                               "livekit.room_minutes": 0.5}},
                           _env_file=None)
    start = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    sids = [
        new_session(priced, started_at=start + timedelta(minutes=i), status="ended",
                    ended_at=start + timedelta(minutes=i + 2))
        for i in range(THREADS)
    ]
    for i, sid in enumerate(sids):
        with session_scope(priced.db.url) as db:
            record_usage(db, sid, "openai", "llm_input_tokens", 100.0 * (i + 1))

    def account(i: int) -> None:
        for sid in (sids[i], sids[(i + 1) % THREADS]):  # every session priced by two threads
            def once(sid: str = sid) -> None:
                with session_scope(priced.db.url) as db:
                    account_session(db, priced, sid)

            retried(once)

    at_once(THREADS, account)
    with session_scope(priced.db.url) as db:
        rows = {
            (r.provider, r.metric): (round(r.quantity, 6), round(r.cost, 6), r.sessions)
            for r in db.scalars(select(DailyUsage).where(DailyUsage.day == date(2025, 6, 1)))
        }
    tokens = 100.0 * sum(range(1, THREADS + 1))
    assert rows == {
        ("openai", "llm_input_tokens"): (tokens, round(tokens * 0.001, 6), THREADS),
        ("livekit", "room_minutes"): (2.0 * THREADS, THREADS * 1.0, THREADS),
    }


def test_sessions_of_one_day_priced_at_once_never_conflict(settings: Settings) -> None:
    """Different sessions of one day, priced at the same moment without any retry: the day's
    totals are rebuilt one transaction at a time (PostgreSQL: the advisory lock), so none
    fails on the totals' unique key and none misses another's costs."""
    start = datetime(2025, 7, 1, 9, 0, tzinfo=UTC)
    sids = [
        new_session(settings, started_at=start, status="ended", ended_at=start + timedelta(minutes=3))
        for _ in range(THREADS)
    ]

    def account(i: int) -> None:
        with session_scope(settings.db.url) as db:
            account_session(db, settings, sids[i])

    at_once(THREADS, account)
    with session_scope(settings.db.url) as db:
        rows = db.execute(
            select(DailyUsage.metric, DailyUsage.quantity, DailyUsage.sessions)
            .where(DailyUsage.day == date(2025, 7, 1))
        ).all()
    assert [(m, round(q, 6), n) for m, q, n in rows] == [("room_minutes", 3.0 * THREADS, THREADS)]


def test_one_claim_wins_when_workers_claim_at_once(settings: Settings) -> None:
    sid = new_session(settings)

    def claim(_: int) -> bool:
        with session_scope(settings.db.url) as db:
            return claim_for_provisioning(db, sid)

    assert sorted(at_once(THREADS, claim)) == [False] * (THREADS - 1) + [True]


# --------------------------------------------------------------------------- webhooks


@pytest.fixture
def hook_settings(settings: Settings, valkey_url: str) -> Settings:
    """A broker database of its own, which no worker consumes: enqueued tasks stay queued."""
    return load_settings(
        db={"url": settings.db.url},
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/6"},
        livekit={"api_key": "testkey", "api_secret": "test-secret-0123456789abcdef0123456789ab",
                 "webhook_rules_prefix": "agent-"},
        _env_file=None,
    )


@pytest.fixture
def queue(hook_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(hook_settings.broker.effective_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def hook_app(hook_settings: Settings) -> AvatarCelery:
    return make_celery(hook_settings, set_as_current=False)


def provision_tasks(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in client.lrange("live", 0, -1)]


def test_one_webhook_delivered_at_once_acts_once(
    hook_settings: Settings, hook_app: AvatarCelery, queue: redis.Redis
) -> None:
    """LiveKit retries a delivery while the first is still being handled."""
    body, auth = signed_webhook(hook_settings, room_event("room_started", "agent-race", sid="RM_r"))

    def deliver(_: int) -> str:
        return str(handle_livekit_webhook(hook_settings, body, auth, app=hook_app).action)

    actions = at_once(THREADS, deliver)
    assert sorted(actions) == ["duplicate"] * (THREADS - 1) + ["session_created"]
    with session_scope(hook_settings.db.url) as db:
        assert db.scalar(select(func.count()).select_from(AgentSessionRecord)) == 1
        assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 1
    assert provision_tasks(queue) == ["tasks.provisioning.provision_session"]


def test_different_events_of_one_room_at_once_start_one_session(
    hook_settings: Settings, hook_app: AvatarCelery, queue: redis.Redis
) -> None:
    """room_started and several participant_joined of one room, handled at the same time."""
    events = [room_event("room_started", "agent-busy", sid="RM_busy")] + [
        room_event("participant_joined", "agent-busy", sid="RM_busy", identity=f"caller-{i}")
        for i in range(THREADS - 1)
    ]

    def deliver(i: int) -> tuple[str, str | None]:
        body, auth = signed_webhook(hook_settings, events[i])
        out = handle_livekit_webhook(hook_settings, body, auth, app=hook_app)
        return str(out.action), out.session_id

    results = at_once(THREADS, deliver)
    actions = sorted(a for a, _ in results)
    assert actions == ["session_created"] + ["session_exists"] * (THREADS - 1)
    assert len({s for _, s in results}) == 1
    with session_scope(hook_settings.db.url) as db:
        records = db.scalars(select(AgentSessionRecord)).all()
        assert [(r.room, r.room_sid) for r in records] == [("agent-busy", "RM_busy")]
    assert provision_tasks(queue) == ["tasks.provisioning.provision_session"]


def test_room_finished_reported_at_once_ends_and_finalizes_once(
    hook_settings: Settings, hook_app: AvatarCelery, queue: redis.Redis
) -> None:
    """room_finished under several event ids at once (LiveKit nodes, retries)."""
    sid = new_session(hook_settings, room="agent-done", room_sid="RM_done", status="active")
    events = [room_event("room_finished", "agent-done", sid="RM_done") for _ in range(THREADS)]

    def deliver(i: int) -> str:
        body, auth = signed_webhook(hook_settings, events[i])
        return str(handle_livekit_webhook(hook_settings, body, auth, app=hook_app).action)

    assert sorted(at_once(THREADS, deliver)) == ["ignored"] * (THREADS - 1) + ["session_ended"]
    finalizes = [json.loads(raw)["headers"]["task"] for raw in queue.lrange("batch", 0, -1)]
    assert finalizes == ["tasks.maintenance.finalize_session"]
    with session_scope(hook_settings.db.url) as db:
        record = db.get(AgentSessionRecord, sid)
        assert record is not None and record.status == "ended"
