"""Beat jobs and the end-of-session pipeline.

`finalize_session` is what the live worker (on session end) and the `room_finished` webhook
call: it starts post-processing -> summary, and usage accounting next to it (a group), so a
summary that fails does not hold back billing. `reconcile_sessions` closes sessions whose room
LiveKit no longer has (missed webhook, crashed worker) or whose live worker stopped beating
(SIGKILLed while the caller stays in the room), and is the outbox of finalisation: an ENDED
session not yet billed (its message was never enqueued, or accounting ran out of retries) is
enqueued again until `account_usage` stamps it. `purge_old_transcripts` enforces the retention
period.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, chain, group, shared_task
from celery.canvas import Signature
from livekit import api
from sqlalchemy import delete, or_, select

from config.settings import Settings
from store.db import session_scope
from store.models import (
    AgentSessionRecord,
    SessionStatus,
    Summary,
    TranscriptLine,
    TranscriptReport,
    WebhookEvent,
    utcnow,
)
from tasks.base import AvatarTask, enqueue_after_commit
from tasks.provisioning import (
    CLAIM_LEASE,
    classify_livekit_error,
    livekit_api,
)

logger = logging.getLogger(__name__)

# A session younger than this may still be getting its room: never close it as "gone".
RECONCILE_GRACE = timedelta(minutes=2)
# A pending session older than this was probably never enqueued (broker down at the time).
STALE_PENDING = timedelta(minutes=1)
GIVE_UP_PENDING = timedelta(minutes=15)
# The live worker and the room_finished webhook enqueue finalisation at once; an ended session
# still unbilled after this long lost that message.
FINALIZE_GRACE = timedelta(minutes=2)
# Post-processing that keeps failing is not retried for ever (billing always is).
POSTPROCESS_WINDOW = timedelta(days=1)
# At most this many lost finalisations are re-enqueued per run (a backlog drains over runs).
FINALIZE_BATCH = 200
# The live worker writes its heartbeat every few seconds (live.recorder.HEARTBEAT_SECONDS);
# silence this long means it is gone. Far above a database outage the recorder rides out.
HEARTBEAT_STALE = timedelta(seconds=90)


def finalize_signature(app: Celery, session_id: str) -> Signature:
    """post_process_transcript -> summarize_session, alongside account_usage."""
    return group(
        chain(
            app.signature("tasks.transcripts.post_process_transcript", args=(session_id,),
                          immutable=True),
            app.signature("tasks.summaries.summarize_session", args=(session_id,),
                          immutable=True),
        ),
        app.signature("tasks.usage.account_usage", args=(session_id,), immutable=True),
    )


@shared_task(base=AvatarTask, bind=True, name="tasks.maintenance.finalize_session")
def finalize_session(self: AvatarTask, session_id: str) -> dict[str, Any]:
    """Start the end-of-session pipeline (never waits on it: no `.get()` on subtasks).

    Safe to run twice: it only enqueues idempotent tasks, each of which recomputes from the
    stored rows and writes under the session's unique keys.
    """
    finalize_signature(self.app, session_id).apply_async()
    return {"session_id": session_id, "status": "enqueued"}


def request_finalize(session_id: str, app: Celery | None = None) -> bool:
    """Enqueue a just-ended session's finalisation; False (logged) if the broker refused.

    Never raises: the session is already ENDED in the store, and `reconcile_sessions` (the
    outbox) enqueues it again until it is billed.
    """
    from tasks.app import get_app

    # The process-wide app, named explicitly: `finalize_session.delay` in a thread other
    # than the one that imported the tasks resolves Celery's thread-local current app to
    # its unconfigured default (AMQP on localhost).
    sender = app or get_app()
    try:
        sender.signature("tasks.maintenance.finalize_session", args=(session_id,)).apply_async()
        return True
    except Exception:
        logger.exception(
            "could not enqueue post-processing; reconciliation will bill the session",
            extra={"session_id": session_id},
        )
        return False


@shared_task(
    base=AvatarTask, bind=True, name="tasks.maintenance.ping", ignore_result=False
)
def ping(self: AvatarTask, value: str = "pong") -> dict[str, Any]:
    """Round-trip check for the broker, worker and result backend.

    Safe to run twice: it has no side effect.
    """
    return {"value": value, "hostname": self.request.hostname, "queue": _queue(self)}


def _queue(task: AvatarTask) -> str | None:
    info = task.request.delivery_info or {}
    return info.get("routing_key") or info.get("exchange")


async def _live_rooms(settings: Settings, names: list[str]) -> set[str]:
    async with livekit_api(settings) as lk:
        resp = await lk.room.list_rooms(api.ListRoomsRequest(names=names))
        return {room.name for room in resp.rooms}


def _aware(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _worker_lost(heartbeat_at: datetime | None, now: datetime) -> bool:
    """The session's live worker stopped beating (a worker that never beat is judged by its
    room alone: an older worker, or one that has not reached ACTIVE)."""
    beat = _aware(heartbeat_at)
    return beat is not None and beat < now - HEARTBEAT_STALE


async def _delete_rooms(settings: Settings, rooms: list[str]) -> None:
    async with livekit_api(settings) as lk:
        for room in rooms:
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            except api.TwirpError as err:
                if err.code != "not_found":
                    raise


def reconcile(settings: Settings, app: Celery) -> dict[str, int]:
    """Close open sessions whose room or worker is gone; re-enqueue or fail stale pending
    ones; re-enqueue the finalisation of ended sessions never billed."""
    now = utcnow()
    with session_scope(settings.db.url) as db:
        running = db.scalars(
            select(AgentSessionRecord).where(
                AgentSessionRecord.status.in_([SessionStatus.DISPATCHED, SessionStatus.ACTIVE]),
                AgentSessionRecord.created_at < now - RECONCILE_GRACE,
            )
        ).all()
        candidates = {r.id: r.room for r in running}
        orphaned = {r.id for r in running if _worker_lost(r.heartbeat_at, now)}
    alive: set[str] = set()
    if candidates:
        try:
            alive = asyncio.run(_live_rooms(settings, sorted(set(candidates.values()))))
        except Exception as err:
            raise classify_livekit_error(err) from None
    closed = requeued = failed = 0
    abandoned_rooms: list[str] = []
    just_closed: set[str] = set()
    with session_scope(settings.db.url) as db:
        for session_id, room in candidates.items():
            if room in alive and session_id not in orphaned:
                continue
            record = db.get(AgentSessionRecord, session_id)
            if record is None or record.status not in (
                SessionStatus.DISPATCHED,
                SessionStatus.ACTIVE,
            ):
                continue  # ended meanwhile (webhook or live worker)
            if not _worker_lost(record.heartbeat_at, now) and room in alive:
                continue  # it beat again meanwhile
            record.status = SessionStatus.ENDED
            if room in alive:
                # The worker died while the caller stayed: the session ends at its last beat
                # (the usage it wrote then is what it used), and the room is closed.
                record.ended_at = record.ended_at or record.heartbeat_at or now
                record.end_reason = record.end_reason or "worker_lost"
                abandoned_rooms.append(room)
            else:
                record.ended_at = record.ended_at or now
                record.end_reason = record.end_reason or "room_gone"
            enqueue_after_commit(
                db, app.signature("tasks.maintenance.finalize_session", args=(session_id,))
            )
            just_closed.add(session_id)
            closed += 1
        pending = db.scalars(
            select(AgentSessionRecord).where(
                AgentSessionRecord.status.in_([SessionStatus.PENDING, SessionStatus.PROVISIONING]),
                AgentSessionRecord.created_at < now - STALE_PENDING,
            )
        ).all()
        for record in pending:
            created = record.created_at
            if created.tzinfo is None:
                created = created.replace(tzinfo=now.tzinfo)
            if created < now - GIVE_UP_PENDING:
                record.status = SessionStatus.FAILED
                record.error = record.error or "never provisioned"
                record.ended_at = now
                failed += 1
            elif record.status == SessionStatus.PENDING or (
                record.provisioned_at is not None
                and record.provisioned_at.replace(tzinfo=now.tzinfo) < now - CLAIM_LEASE
            ):
                enqueue_after_commit(
                    db,
                    app.signature("tasks.provisioning.provision_session", args=(record.id,)),
                )
                requeued += 1
    if abandoned_rooms:
        try:  # the caller is not left alone in a room nobody answers in
            asyncio.run(_delete_rooms(settings, abandoned_rooms))
        except Exception:
            logger.warning("could not close the rooms of lost workers", exc_info=True)
    refinalized = refinalize(settings, app, now, skip=just_closed)
    counts = {
        "checked": len(candidates),
        "closed": closed,
        "requeued": requeued,
        "failed": failed,
        "refinalized": refinalized,
    }
    if closed or requeued or failed or refinalized:
        logger.info("sessions reconciled", extra=counts)
    return counts


def refinalize(
    settings: Settings, app: Celery, now: datetime, skip: set[str] | None = None
) -> int:
    """The finalisation outbox: enqueue again what an ended session is still missing.

    Billing (`account_usage`) until `billed_at` is stamped, with no time limit; transcript
    post-processing and the summary until `postprocessed_at` is, within POSTPROCESS_WINDOW.
    Every task enqueued is idempotent, so a message that was in fact delivered (and is just
    slow) costs a repeat, never a double bill.
    """
    with session_scope(settings.db.url) as db:
        rows = db.execute(
            select(
                AgentSessionRecord.id,
                AgentSessionRecord.ended_at,
                AgentSessionRecord.billed_at,
                AgentSessionRecord.postprocessed_at,
            )
            .where(
                AgentSessionRecord.status == SessionStatus.ENDED,
                AgentSessionRecord.ended_at < now - FINALIZE_GRACE,
                or_(
                    AgentSessionRecord.billed_at.is_(None),
                    AgentSessionRecord.postprocessed_at.is_(None)
                    & (AgentSessionRecord.ended_at > now - POSTPROCESS_WINDOW),
                ),
            )
            .order_by(AgentSessionRecord.ended_at)
            .limit(FINALIZE_BATCH)
        ).all()
    sigs: list[Signature] = []
    for session_id, _ended_at, billed_at, postprocessed_at in rows:
        if skip and session_id in skip:
            continue  # closed by this run, which enqueued its finalisation already
        if billed_at is None and postprocessed_at is None:
            sigs.append(finalize_signature(app, session_id))
        elif billed_at is None:
            sigs.append(
                app.signature("tasks.usage.account_usage", args=(session_id,), immutable=True)
            )
        else:
            sigs.append(
                chain(
                    app.signature("tasks.transcripts.post_process_transcript",
                                  args=(session_id,), immutable=True),
                    app.signature("tasks.summaries.summarize_session",
                                  args=(session_id,), immutable=True),
                )
            )
    for sig in sigs:
        sig.apply_async()  # a broker error fails this run; the next run tries again
    return len(sigs)


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.maintenance.reconcile_sessions",
    max_retries=2,
    expires=120,
)
def reconcile_sessions(self: AvatarTask) -> dict[str, int]:
    """Close sessions still marked dispatched/active whose LiveKit room is gone.

    Safe to run twice: a session is closed only while still open (checked again in the
    closing transaction), and the pipeline it enqueues is idempotent.
    """
    return reconcile(self.settings, self.app)


def purge_transcripts(settings: Settings) -> int:
    """Delete transcript lines older than the retention period; returns how many."""
    cutoff = utcnow() - timedelta(days=settings.limits.transcript_retention_days)
    with session_scope(settings.db.url) as db:
        result = db.execute(
            delete(TranscriptLine)
            .where(TranscriptLine.created_at < cutoff)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


# LiveKit signs each webhook with a token valid for minutes, and a replay after that fails
# the signature check; the event ids only need to outlive that (and LiveKit's retries).
WEBHOOK_EVENT_RETENTION = timedelta(days=2)


def purge_expired(settings: Settings) -> dict[str, int]:
    """Delete what the retention period covers: transcript lines, the full-text exports
    (transcript reports) and summaries; and webhook event ids past their replay window.

    Usage and cost rows stay: they hold no conversation text and bill the session.
    """
    cutoff = utcnow() - timedelta(days=settings.limits.transcript_retention_days)
    counts = {"lines": purge_transcripts(settings)}
    with session_scope(settings.db.url) as db:
        for name, model, column in (
            ("reports", TranscriptReport, TranscriptReport.created_at),
            ("summaries", Summary, Summary.created_at),
        ):
            result = db.execute(
                delete(model).where(column < cutoff).execution_options(synchronize_session=False)
            )
            counts[name] = int(getattr(result, "rowcount", 0) or 0)
        result = db.execute(
            delete(WebhookEvent)
            .where(WebhookEvent.received_at < utcnow() - WEBHOOK_EVENT_RETENTION)
            .execution_options(synchronize_session=False)
        )
        counts["webhook_events"] = int(getattr(result, "rowcount", 0) or 0)
    return counts


@shared_task(base=AvatarTask, bind=True, name="tasks.maintenance.purge_old_transcripts")
def purge_old_transcripts(self: AvatarTask) -> dict[str, int]:
    """Delete transcripts, exports and summaries past `limits.transcript_retention_days`,
    and old webhook event ids.

    Safe to run twice: deleting what is already deleted deletes nothing.
    """
    counts = purge_expired(self.settings)
    if any(counts.values()):
        logger.info("retention purge", extra=counts)
    return {"deleted": counts["lines"], **counts}
