"""Faults of the back office, against a real Valkey, real Celery workers and SQLite.

Each test breaks one thing the way it breaks in production (a broker that refuses the message
at session end, a worker SIGKILLed mid-task, a broker restarted with tasks queued) and checks
that nothing is lost and nothing happens twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from livekit import api
from sqlalchemy import func, select

from cli.services import free_port, start_valkey, stop_process
from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import DailyUsage, SessionCost, SessionStatus, UsageRecord, utcnow
from store.writes import record_usage
from tasks.app import AvatarCelery, make_celery
from tasks.maintenance import reconcile, request_finalize
from tests.tasks.conftest import (
    WebhookLiveKit,
    WorkerProcess,
    start_worker,
    wait_for,
    wait_worker_ready,
)
from tests.tasks.helpers import get_session, livekit_client, new_session, unique
from tests.tasks.test_webhooks import queued_tasks

USAGE = {
    ("openai", "llm_input_tokens"): 12_000.0,
    ("openai", "llm_output_tokens"): 3_000.0,
    ("tavus", "avatar_seconds"): 300.0,
}


@dataclass
class BackOffice:
    settings: Settings
    sender: AvatarCelery
    redis: redis.Redis
    worker: WorkerProcess


def _own_settings(
    db_url: str, broker_url: str, var_dir: Path, *, visibility_timeout: int = 900
) -> Settings:
    # LiveKit points at a closed port: these tests have no open session, so reconciliation
    # never needs it (and would fail loudly if it did).
    return load_settings(
        db={"url": db_url},
        broker={"url": broker_url, "visibility_timeout_seconds": visibility_timeout},
        livekit={"url": f"ws://127.0.0.1:{free_port()}", "api_key": "testkey",
                 "api_secret": "test-secret-0123456789abcdef0123456789abcdef"},
        var_dir=var_dir,
        _env_file=None,
    )


@pytest.fixture
def back_office(db_url: str, valkey_url: str, tmp_path: Path) -> Iterator[BackOffice]:
    """A Celery worker of its own: a fresh database and a broker database of its own, so no
    other test's session or message is involved."""
    settings = _own_settings(db_url, valkey_url.rsplit("/", 1)[0] + "/7", tmp_path)
    client = redis.Redis.from_url(settings.broker.effective_url)
    client.flushdb()
    sender = make_celery(settings, set_as_current=False)
    worker = start_worker(settings, queues="live,batch", log=tmp_path / "worker.log",
                          name="faults")
    try:
        wait_worker_ready(sender, worker)
        yield BackOffice(settings, sender, client, worker)
    finally:
        stop_process(worker.proc)
        client.flushdb()
        client.close()


def _ended_session_with_usage(settings: Settings) -> str:
    """What the live worker leaves in the store at session end, before it enqueues."""
    now = utcnow()
    sid = new_session(
        settings,
        status=SessionStatus.ENDED,
        created_at=now - timedelta(minutes=15),
        started_at=now - timedelta(minutes=14),
        ended_at=now - timedelta(minutes=4),
        end_reason="caller_left",
    )
    with session_scope(settings.db.url) as db:
        for (provider, metric), qty in USAGE.items():
            record_usage(db, sid, provider, metric, qty)
    return sid


def _bill(settings: Settings, sid: str) -> dict[tuple[str, str], float]:
    with session_scope(settings.db.url) as db:
        rows = db.execute(
            select(SessionCost.provider, SessionCost.metric, SessionCost.quantity)
            .where(SessionCost.session_id == sid)
        ).all()
    return {(p, m): q for p, m, q in rows}


def _daily(settings: Settings) -> dict[tuple[str, str], tuple[float, int]]:
    with session_scope(settings.db.url) as db:
        rows = db.execute(
            select(DailyUsage.provider, DailyUsage.metric, DailyUsage.quantity,
                   DailyUsage.sessions)
        ).all()
    return {(p, m): (q, n) for p, m, q, n in rows}


@pytest.mark.integration
def test_finalisation_not_enqueued_is_billed_once_by_reconciliation(
    back_office: BackOffice,
) -> None:
    settings, sender = back_office.settings, back_office.sender
    sid = _ended_session_with_usage(settings)

    # Session end with the broker unreachable: the enqueue fails, the call does not raise.
    down = make_celery(
        _own_settings(settings.db.url, f"redis://127.0.0.1:{free_port()}/0", settings.var_dir),
        set_as_current=False,
    )
    assert request_finalize(sid, app=down) is False
    assert get_session(settings, sid).billed_at is None

    # The beat job, run by the real worker, finds the ended, unbilled session.
    counts = sender.send_task(
        "tasks.maintenance.reconcile_sessions", ignore_result=False
    ).get(timeout=60)
    assert counts["refinalized"] == 1
    billed = wait_for(
        lambda: get_session(settings, sid).billed_at, timeout=60, what="the session billed"
    )
    wait_for(lambda: get_session(settings, sid).postprocessed_at, timeout=60,
             what="the transcript post-processed")
    bill = _bill(settings, sid)
    assert {k: bill[k] for k in USAGE} == USAGE
    assert bill[("livekit", "room_minutes")] == pytest.approx(10.0, abs=0.01)

    # Exactly once: the next run finds nothing to do, and a duplicate delivery of the
    # accounting task (as acks_late allows) changes neither the bill nor the day's totals.
    daily = _daily(settings)
    assert daily[("tavus", "avatar_seconds")] == (300.0, 1)
    assert reconcile(settings, sender)["refinalized"] == 0
    sender.send_task("tasks.usage.account_usage", args=(sid,), ignore_result=False).get(
        timeout=60
    )
    assert _bill(settings, sid) == bill
    assert _daily(settings) == daily
    assert get_session(settings, sid).billed_at == billed
    with session_scope(settings.db.url) as db:
        assert db.scalar(select(func.count()).select_from(SessionCost)) == len(bill)
        assert db.scalar(select(func.count()).select_from(UsageRecord)) == len(USAGE)


@pytest.mark.integration
def test_reconciliation_reenqueues_only_the_missing_billing(
    settings: Settings, valkey_url: str
) -> None:
    """Accounting ran out of retries after post-processing succeeded: only billing is sent
    again; a session ended moments ago is left to its own finalisation."""
    own = _own_settings(settings.db.url, valkey_url.rsplit("/", 1)[0] + "/8", settings.var_dir)
    client = redis.Redis.from_url(own.broker.effective_url)
    client.flushdb()
    app = make_celery(own, set_as_current=False)
    unbilled = _ended_session_with_usage(own)
    with session_scope(own.db.url) as db:
        get = db.get(type(get_session(own, unbilled)), unbilled)
        assert get is not None
        get.postprocessed_at = utcnow() - timedelta(minutes=3)
    just_ended = new_session(own, status=SessionStatus.ENDED, ended_at=utcnow())
    try:
        assert reconcile(own, app)["refinalized"] == 1
        assert queued_tasks(client, "batch") == [("tasks.usage.account_usage", [unbilled])]
        assert just_ended not in str(queued_tasks(client, "batch"))
    finally:
        client.flushdb()
        client.close()


@pytest.mark.integration
async def test_session_whose_worker_stopped_beating_is_finalised_and_its_room_closed(
    webhook_livekit: WebhookLiveKit, settings: Settings, valkey_url: str
) -> None:
    """A live worker SIGKILLed while the caller stays: the room lives on, the heartbeat stops.
    Reconciliation ends the session at its last beat and closes the room; a session whose
    worker still beats is left alone."""
    own = load_settings(
        db={"url": settings.db.url},
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/9"},
        livekit={"url": webhook_livekit.url, "api_key": webhook_livekit.api_key,
                 "api_secret": webhook_livekit.api_secret},
        _env_file=None,
    )
    client = redis.Redis.from_url(own.broker.effective_url)
    client.flushdb()
    app = make_celery(own, set_as_current=False)
    now = utcnow()
    lost_room, healthy_room = unique("avatar-lost-"), unique("avatar-beating-")
    async with livekit_client(own) as lk:
        for room in (lost_room, healthy_room):
            await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=300))
    last_beat = now - timedelta(minutes=3)
    lost = new_session(own, room=lost_room, status=SessionStatus.ACTIVE,
                       created_at=now - timedelta(minutes=10),
                       started_at=now - timedelta(minutes=9), heartbeat_at=last_beat)
    healthy = new_session(own, room=healthy_room, status=SessionStatus.ACTIVE,
                          created_at=now - timedelta(minutes=10),
                          started_at=now - timedelta(minutes=9), heartbeat_at=now)
    try:
        counts = await asyncio.to_thread(reconcile, own, app)
        async with livekit_client(own) as lk:
            rooms = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
    finally:
        async with livekit_client(own) as lk:
            for room in (lost_room, healthy_room):
                try:
                    await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                except api.TwirpError:
                    pass
    record = get_session(own, lost)
    assert (record.status, record.end_reason) == (SessionStatus.ENDED, "worker_lost")
    assert record.ended_at is not None
    assert record.ended_at.replace(tzinfo=None) == last_beat.replace(tzinfo=None)
    assert get_session(own, healthy).status == SessionStatus.ACTIVE
    assert counts["closed"] == 1
    assert lost_room not in rooms and healthy_room in rooms
    assert queued_tasks(client, "batch") == [("tasks.maintenance.finalize_session", [lost])]
    client.flushdb()
    client.close()


# --------------------------------------------------------------------------- broker and worker


def _bill_all(settings: Settings, sids: list[str]) -> bool:
    return all(get_session(settings, sid).billed_at for sid in sids)


class SqliteWriteLock:
    """Another connection holding the database's write lock: a task writing waits on it."""

    def __init__(self, settings: Settings) -> None:
        import sqlite3

        self.path = settings.db.url.split("///", 1)[1]
        self._conn = sqlite3.connect(self.path, timeout=1, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("UPDATE sessions SET room = room")

    def release(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._conn.close()


def _pool_process_running(app: AvatarCelery, task_id: str) -> Any:
    """The pool process running task `task_id` right now, or None.

    Asked of the workers (``inspect().active()`` gives each active task's pool pid): a pool
    process that merely has the database open may still hold a connection from an earlier
    task, and the task may not even have reached the worker yet.
    """
    import psutil

    for tasks in (app.control.inspect(timeout=1.0).active() or {}).values():
        for task in tasks:
            if task.get("id") == task_id and task.get("worker_pid"):
                return psutil.Process(task["worker_pid"])
    return None


@pytest.mark.integration
@pytest.mark.sqlite_only
def test_valkey_crash_with_tasks_queued_loses_none_and_everyone_reconnects(
    db_url: str, tmp_path: Path
) -> None:
    """Tasks queued while no worker runs survive a SIGKILLed Valkey (append-only file, fsync
    on every write). A crash while a task runs (its acknowledgement then fails) leaves the
    worker running: it reconnects, as does the sender, and new tasks run."""
    port, data = free_port(), tmp_path / "valkey"
    valkey = start_valkey(port, data, log_path=tmp_path / "valkey.log")
    settings = _own_settings(db_url, f"redis://127.0.0.1:{port}/0", tmp_path)
    sender = make_celery(settings, set_as_current=False)
    worker: WorkerProcess | None = None
    try:
        first = [_ended_session_with_usage(settings) for _ in range(5)]
        for sid in first:
            sender.send_task("tasks.usage.account_usage", args=(sid,))
        valkey.kill()  # a crash: no shutdown save
        valkey.wait(10)
        valkey = start_valkey(port, data, log_path=tmp_path / "valkey.log")
        client = redis.Redis.from_url(settings.broker.effective_url)
        assert client.llen("batch") == len(first)
        client.close()

        worker = start_worker(settings, queues="live,batch", log=tmp_path / "worker.log",
                              name="restart")
        wait_worker_ready(sender, worker)
        wait_for(lambda: _bill_all(settings, first), timeout=60, what="the queued tasks")

        # Crash Valkey while a task runs: the task ends after the broker is gone.
        running = _ended_session_with_usage(settings)
        lock = SqliteWriteLock(settings)
        try:
            sent = sender.send_task("tasks.usage.account_usage", args=(running,))
            wait_for(lambda: _pool_process_running(sender, sent.id), timeout=30,
                     what="the task to start")
            valkey.kill()
            valkey.wait(10)
        finally:
            lock.release()
        wait_for(lambda: get_session(settings, running).billed_at, timeout=60,
                 what="the running task to finish")
        valkey = start_valkey(port, data, log_path=tmp_path / "valkey.log")

        second = [_ended_session_with_usage(settings) for _ in range(3)]
        for sid in second:  # the same sender app: its pooled connections died with Valkey
            sender.send_task("tasks.usage.account_usage", args=(sid,))
        try:
            wait_for(lambda: _bill_all(settings, second), timeout=120,
                     what="the running worker to reconnect and run the new tasks")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{worker.log_text()[-5000:]}") from None
        assert worker.proc.poll() is None, worker.log_text()[-5000:]
        assert "Unrecoverable error" not in worker.log_text()
    finally:
        if worker is not None:
            stop_process(worker.proc)
        stop_process(valkey)


@pytest.mark.integration
@pytest.mark.sqlite_only
def test_celery_child_sigkilled_mid_task_runs_it_again_with_one_effect(
    back_office: BackOffice,
) -> None:
    """The pool process running `account_usage` is SIGKILLed (as the OOM killer does) while
    the task waits on the database: the message is not acknowledged (acks_late), comes back
    (reject_on_worker_lost), runs again, and the session is billed once."""
    import psutil

    settings, worker = back_office.settings, back_office.worker
    sid = _ended_session_with_usage(settings)
    lock = SqliteWriteLock(settings)  # the task's first write waits on this lock
    try:
        sent = back_office.sender.send_task("tasks.usage.account_usage", args=(sid,))
        victim = wait_for(lambda: _pool_process_running(back_office.sender, sent.id),
                          timeout=30, what="a pool process running the task")
        victim.kill()
        psutil.wait_procs([victim], timeout=10)
        assert get_session(settings, sid).billed_at is None
    finally:
        lock.release()
    wait_for(lambda: get_session(settings, sid).billed_at, timeout=90,
             what="the task to run again")
    # Celery logs "succeeded" once the task has returned, a moment after its write
    wait_for(lambda: f"account_usage[{sent.id}] succeeded" in worker.log_text(), timeout=30,
             what="the worker to log the task's success")
    log = worker.log_text()
    assert "WorkerLostError" in log
    assert log.count(f"account_usage[{sent.id}] received") == 2  # lost, then delivered again
    assert log.count(f"account_usage[{sent.id}] succeeded") == 1
    bill = _bill(settings, sid)
    assert {k: bill[k] for k in USAGE} == USAGE
    assert _daily(settings)[("tavus", "avatar_seconds")] == (300.0, 1)


@pytest.mark.integration
@pytest.mark.sqlite_only
def test_whole_celery_worker_sigkilled_mid_task_another_restores_it_with_one_effect(
    db_url: str, valkey_url: str, tmp_path: Path
) -> None:
    """A whole worker (main process and pool) is SIGKILLed while `account_usage` runs: nobody
    returns its message, which stays in Valkey's unacked index. Another worker restores it
    once the visibility timeout (3 s here, `broker.visibility_timeout_seconds`) has passed,
    runs it, and the session is billed once."""
    import os
    import signal

    import psutil

    settings = _own_settings(
        db_url, valkey_url.rsplit("/", 1)[0] + "/8", tmp_path, visibility_timeout=3
    )
    client = redis.Redis.from_url(settings.broker.effective_url)
    client.flushdb()
    sender = make_celery(settings, set_as_current=False)
    sid = _ended_session_with_usage(settings)
    first = start_worker(settings, queues="batch", log=tmp_path / "first.log", name="first")
    second: WorkerProcess | None = None
    try:
        wait_worker_ready(sender, first)
        lock = SqliteWriteLock(settings)  # the task's first write waits on this lock
        try:
            sent = sender.send_task("tasks.usage.account_usage", args=(sid,))
            wait_for(lambda: _pool_process_running(sender, sent.id), timeout=30,
                     what="the first worker's pool process running the task")
            family = [psutil.Process(first.proc.pid), *psutil.Process(first.proc.pid).children()]
            os.killpg(first.proc.pid, signal.SIGKILL)  # the worker has a session of its own
            psutil.wait_procs(family, timeout=10)
            first.proc.wait(10)
            assert get_session(settings, sid).billed_at is None
            assert client.hlen("unacked") == 1  # taken, never acknowledged nor returned
        finally:
            lock.release()
        second = start_worker(settings, queues="batch", log=tmp_path / "second.log",
                              name="second")
        wait_for(lambda: get_session(settings, sid).billed_at, timeout=90,
                 what="another worker to restore and run the task")
        # Celery logs "succeeded" once the task has returned, a moment after its write
        wait_for(lambda: f"account_usage[{sent.id}] succeeded" in second.log_text(),
                 timeout=30, what="the second worker to log the task's success")
        log = second.log_text()
        assert log.count(f"account_usage[{sent.id}] received") == 1
        assert log.count(f"account_usage[{sent.id}] succeeded") == 1
        assert f"account_usage[{sent.id}] succeeded" not in first.log_text()
        bill = _bill(settings, sid)
        assert {k: bill[k] for k in USAGE} == USAGE
        assert _daily(settings)[("tavus", "avatar_seconds")] == (300.0, 1)
        wait_for(lambda: client.hlen("unacked") == 0, timeout=30, what="the ack")
    finally:
        stop_process(first.proc)
        if second is not None:
            stop_process(second.proc)
        client.flushdb()
        client.close()


@pytest.mark.integration
def test_session_end_enqueues_from_a_worker_thread_to_the_configured_broker(
    settings: Settings, valkey_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live worker enqueues at session end from a thread (asyncio.to_thread); Celery's
    current app is thread-local, so the process-wide app must be named, not found."""
    import threading

    own = _own_settings(settings.db.url, valkey_url.rsplit("/", 1)[0] + "/10", settings.var_dir)
    client = redis.Redis.from_url(own.broker.effective_url)
    client.flushdb()
    monkeypatch.setattr("tasks.app._default", make_celery(own, set_as_current=False))
    sent: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: sent.update(ok=request_finalize("s-1")))
    thread.start()
    thread.join(30)
    try:
        assert sent == {"ok": True}
        assert queued_tasks(client, "batch") == [("tasks.maintenance.finalize_session", ["s-1"])]
    finally:
        client.flushdb()
        client.close()
