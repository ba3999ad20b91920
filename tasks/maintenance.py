"""Beat jobs and the end-of-session pipeline.

`finalize_session` is what the live worker (on session end) and the `room_finished` webhook
call: it starts post-processing -> summary, and usage accounting next to it (a group), so a
summary that fails does not hold back billing. `reconcile_sessions` closes sessions whose room
LiveKit no longer has (missed webhook, crashed worker); `purge_old_transcripts` enforces the
retention period.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from celery import Celery, chain, group, shared_task
from celery.canvas import Signature
from livekit import api
from sqlalchemy import delete, select

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


def reconcile(settings: Settings, app: Celery) -> dict[str, int]:
    """Close open sessions whose room is gone; re-enqueue or fail stale pending ones."""
    now = utcnow()
    with session_scope(settings.db.url) as db:
        running = db.scalars(
            select(AgentSessionRecord).where(
                AgentSessionRecord.status.in_([SessionStatus.DISPATCHED, SessionStatus.ACTIVE]),
                AgentSessionRecord.created_at < now - RECONCILE_GRACE,
            )
        ).all()
        candidates = {r.id: r.room for r in running}
    alive: set[str] = set()
    if candidates:
        try:
            alive = asyncio.run(_live_rooms(settings, sorted(set(candidates.values()))))
        except Exception as err:
            raise classify_livekit_error(err) from None
    closed = requeued = failed = 0
    with session_scope(settings.db.url) as db:
        for session_id, room in candidates.items():
            if room in alive:
                continue
            record = db.get(AgentSessionRecord, session_id)
            if record is None or record.status not in (
                SessionStatus.DISPATCHED,
                SessionStatus.ACTIVE,
            ):
                continue  # ended meanwhile (webhook or live worker)
            record.status = SessionStatus.ENDED
            record.ended_at = record.ended_at or now
            record.end_reason = record.end_reason or "room_gone"
            enqueue_after_commit(
                db, app.signature("tasks.maintenance.finalize_session", args=(session_id,))
            )
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
    counts = {"checked": len(candidates), "closed": closed, "requeued": requeued, "failed": failed}
    if closed or requeued or failed:
        logger.info("sessions reconciled", extra=counts)
    return counts


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
