"""Dispatch the agent again when its job is lost mid-session.

Self-hosted LiveKit never dispatches a job again when the worker running it dies
(livekit/agents#1472). LiveKit does report the agent leaving the room (`participant_left`,
with the participant's attributes: the session and the job that held it), so the webhook
enqueues :func:`resume_session`, which puts an agent back in the same room for the same
caller: a new dispatch whose metadata is the session's spec marked ``resume_from``. The job
that takes it (any worker with a free slot, on any node) claims the session from that marker
and rebuilds the conversation from the stored transcript (see ``store.resume``).

A LiveKit node that dies (SIGKILL, its machine gone) sends no webhook: its rooms' media and
signalling are gone. The job then sees its room connection drop and not come back; it
reports the loss itself (``room_lost=True``, see ``live.room_loss``). The room's node is dead,
so LiveKit cannot tell who is in the room: the resume does not ask. It dispatches to the
same room name; LiveKit places the room on a node it still considers alive and creates it
there again. Until the dead node's stats are stale (5 s after its last update, 2 s apart:
``selector.IsAvailable`` in livekit-server) LiveKit still routes the room to it, and the
dispatch would wait on it (10 s, three times); so each attempt is cut short and repeated
(:func:`_dispatch_when_routable`). The caller's SDK reconnects through the cluster's URL and
lands in the room on the surviving node; the new job waits for the caller like any other.

A node and the worker holding the session can die together (one machine). Then no job
reports anything, but the caller's SDK comes back and LiveKit creates the room again: the
webhook of the room of an active session starting again schedules
:func:`resume_if_holder_gone`, which resumes the session once its job's heartbeat has been
silent for HOLDER_SILENT_SECONDS.

Once per loss: the session row is compare-and-set from the lost job to the marker, so a
repeated webhook or task finds the session no longer held by the lost job and does nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from livekit import api
from sqlalchemy import func, select, update

from config.session import SessionSpec
from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, TranscriptLine
from store.resume import (
    RESUME_KEY,
    RESUME_LINE,
    RESUME_MARKER_PREFIX,
    SESSION_ATTR,
    WORKER_ATTR,
    resume_metadata,
)
from tasks.base import AvatarTask, TransientError
from tasks.provisioning import classify_livekit_error, livekit_api

logger = logging.getLogger(__name__)

# A dispatch is checked this long after it was made (a job normally claims its session
# within a second or two; a new job process may need longer, hence the repeated checks) ...
CHECK_AFTER_SECONDS = 4.0
# ... and again until a job holds it, at most this many times (about a minute).
MAX_CHECKS = 15
# A session whose jobs keep dying is not dispatched for ever: after this many resumes it is
# left to reconciliation, which ends it (`worker_lost`) and closes the room.
MAX_RESUMES = 3
# After a node loss, one dispatch attempt is cut short after this long (LiveKit would hold it
# while it still routes the room to the dead node), and attempts go on for this long.
ATTEMPT_SECONDS = 1.5
ROUTABLE_WITHIN_SECONDS = 25.0
# A node and the worker running the session's job can die together (one machine). Nothing
# reports the job's loss then, but the caller's SDK reconnects and the room is created again
# on a live node: its webhook asks resume_if_holder_gone to look. The job's heartbeat
# (live.recorder, every 5 s) not moving on for this long says it is gone ...
HOLDER_SILENT_SECONDS = 11.0
# ... looked at up to this many times (a job that still beats is alive: it reports the room's
# loss itself, see live.room_loss).
HOLDER_CHECKS = 3
CALLER_KINDS = (api.ParticipantInfo.Kind.STANDARD, api.ParticipantInfo.Kind.SIP)
AGENT_KIND = api.ParticipantInfo.Kind.AGENT


async def _room_state(
    settings: Settings, room: str, session_id: str, lost_worker_id: str
) -> tuple[int, int, int]:
    """Callers in the room, agents serving this session in it, resumes dispatched so far.

    The lost job's own agent does not count, and is removed if still listed: a cluster keeps
    a dead node's participants in its room state when the room is created again elsewhere.
    """
    async with livekit_api(settings) as lk:
        try:
            res = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError as err:
            if err.code == "not_found":
                return 0, 0, 0
            raise
        callers = sum(1 for p in res.participants if p.kind in CALLER_KINDS)
        ours = [p for p in res.participants
                if p.kind == AGENT_KIND and p.attributes.get(SESSION_ATTR) == session_id]
        agents = 0
        for p in ours:
            if p.attributes.get(WORKER_ATTR) != lost_worker_id:
                agents += 1
                continue
            try:
                await lk.room.remove_participant(
                    api.RoomParticipantIdentity(room=room, identity=p.identity))
            except api.TwirpError as err:
                logger.info("the lost job's agent could not be removed from the room",
                            extra={"room": room, "identity": p.identity, "code": err.code})
        resumes = 0
        for d in await lk.agent_dispatch.list_dispatch(room):
            try:
                meta = json.loads(d.metadata or "{}")
            except ValueError:
                continue
            if isinstance(meta, dict) and meta.get("session_id") == session_id and RESUME_KEY in meta:
                resumes += 1
        return callers, agents, resumes


async def _dispatch(settings: Settings, room: str, metadata: str) -> str:
    async with livekit_api(settings) as lk:
        created = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=settings.livekit.agent_name, room=room, metadata=metadata))
        return str(created.id)


async def _dispatch_when_routable(settings: Settings, room: str, metadata: str) -> str:
    """Dispatch into a room whose node may have just died: repeat short attempts until
    LiveKit routes the room to a live node (it creates the room there again)."""
    deadline = time.monotonic() + ROUTABLE_WITHIN_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            return await asyncio.wait_for(_dispatch(settings, room, metadata), ATTEMPT_SECONDS)
        except Exception as err:
            if time.monotonic() >= deadline:
                raise
            logger.info("room not routable yet; dispatching again",
                        extra={"room": room, "attempt": attempts, "error": type(err).__name__})
            await asyncio.sleep(0.3)  # a pause between attempts, not synchronisation


def _resumes_so_far(settings: Settings, session_id: str) -> int:
    """How often the session was resumed: each resumed job says RESUME_LINE first (the
    node-loss path cannot ask LiveKit for the room's dispatches: the room's node is gone)."""
    with session_scope(settings.db.url) as db:
        return int(db.scalar(select(func.count()).select_from(TranscriptLine).where(
            TranscriptLine.session_id == session_id, TranscriptLine.speaker == "agent",
            TranscriptLine.text == RESUME_LINE)) or 0)


def _set_holder(settings: Settings, session_id: str, expected: str, new: str) -> bool:
    with session_scope(settings.db.url) as db:
        result = db.execute(
            update(AgentSessionRecord)
            .where(AgentSessionRecord.id == session_id,
                   AgentSessionRecord.status == SessionStatus.ACTIVE,
                   AgentSessionRecord.worker_id == expected)
            .values(worker_id=new)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))


async def _assigned(settings: Settings, room: str, session_id: str, marker: str | None) -> bool:
    """Whether a worker accepted one of the session's dispatches (this marker's) and has
    not finished it: a running job. (A job no worker accepted stays listed as pending.)"""
    async with livekit_api(settings) as lk:
        for d in await lk.agent_dispatch.list_dispatch(room):
            try:
                meta = json.loads(d.metadata or "{}")
            except ValueError:
                continue
            if not isinstance(meta, dict) or meta.get("session_id") != session_id:
                continue
            if meta.get(RESUME_KEY) != marker:
                continue
            if any(job.state.status == api.JobStatus.JS_RUNNING for job in d.state.jobs):
                return True
    return False


def check_dispatch(settings: Settings, session_id: str, marker: str | None = None) -> str:
    """Dispatch again a session no worker took.

    LiveKit drops a dispatch that no worker accepts: every worker of the node it was routed
    to at its cap (LiveKit does not try another node's workers), or no worker at all. The
    session would wait for ever; checked a few seconds after each dispatch, it is dispatched
    again while no job holds it (the claim keeps it to one agent if two jobs start).
    Returns what it found: taken | assigned | dispatched.
    """
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        if rec is None:
            return "taken"
        waiting = (rec.status == SessionStatus.ACTIVE and rec.worker_id == marker) if marker \
            else (rec.status == SessionStatus.DISPATCHED and rec.worker_id is None)
        if not waiting:
            return "taken"
        room = rec.room
        spec_json = SessionSpec.model_validate(
            {**(rec.spec or {}), "session_id": session_id}).model_dump_json(exclude_none=False)
    try:
        if asyncio.run(_assigned(settings, room, session_id, marker)):
            return "assigned"
        metadata = resume_metadata(spec_json, marker) if marker else spec_json
        dispatch_id = asyncio.run(_dispatch(settings, room, metadata))
    except Exception as err:
        raise classify_livekit_error(err) from None
    logger.info("no worker took the session; dispatched again",
                extra={"session_id": session_id, "room": room, "dispatch_id": dispatch_id})
    return "dispatched"


def schedule_check(app: Any, session_id: str, marker: str | None = None, attempt: int = 1) -> None:
    """Check the dispatch a few seconds from now (never raises: reconciliation remains)."""
    try:
        app.signature("tasks.resume.check_dispatch_task", args=(session_id, marker, attempt),
                      countdown=CHECK_AFTER_SECONDS).apply_async()
    except Exception:
        logger.warning("could not schedule the dispatch check", extra={"session_id": session_id},
                       exc_info=True)


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.resume.check_dispatch_task",
    soft_time_limit=20,
    time_limit=40,
    max_retries=3,
    retry_backoff_max=5,
)
def check_dispatch_task(
    self: AvatarTask, session_id: str, marker: str | None = None, attempt: int = 1
) -> dict[str, Any]:
    """See :func:`check_dispatch`; checks again until a job holds the session.

    Safe to run twice: it dispatches only while no job holds the session and LiveKit has no
    pending or running job for it; a second agent would find the session claimed and leave.
    """
    found = check_dispatch(self.settings, session_id, marker)
    if found != "taken" and attempt < MAX_CHECKS:
        schedule_check(self.app, session_id, marker, attempt + 1)
    return {"session_id": session_id, "found": found, "attempt": attempt}


def resume(
    settings: Settings, session_id: str, lost_worker_id: str, app: Any = None,
    room_lost: bool = False,
) -> dict[str, Any]:
    """Dispatch the session again if its job is gone and its caller is still there.

    ``room_lost``: the job reported its room connection gone (the room's node died): the
    room cannot be asked who is in it, the dispatch re-creates it on a live node.
    """
    out: dict[str, Any] = {"session_id": session_id}
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        if rec is None or rec.status != SessionStatus.ACTIVE:
            return {**out, "action": "not_open"}  # ended normally: nothing was lost
        if rec.worker_id != lost_worker_id:
            return {**out, "action": "not_held"}  # resumed already, or another job holds it
        room = rec.room
        spec_json = SessionSpec.model_validate(
            {**(rec.spec or {}), "session_id": session_id}).model_dump_json(exclude_none=False)
    if room_lost:
        resumes = _resumes_so_far(settings, session_id)
    else:
        try:
            callers, agents, resumes = asyncio.run(
                _room_state(settings, room, session_id, lost_worker_id))
        except Exception as err:
            raise classify_livekit_error(err) from None
        if not callers:
            return {**out, "action": "no_caller"}  # the room's end finalises it
        if agents:
            return {**out, "action": "agent_present"}
    if resumes >= MAX_RESUMES:
        logger.warning("session lost its job too often; not dispatched again",
                       extra={"session_id": session_id, "resumes": resumes})
        return {**out, "action": "gave_up"}
    marker = f"{RESUME_MARKER_PREFIX}{secrets.token_hex(8)}"
    if not _set_holder(settings, session_id, lost_worker_id, marker):
        return {**out, "action": "not_held"}
    metadata = resume_metadata(spec_json, marker)
    try:
        dispatch_id = asyncio.run(_dispatch_when_routable(settings, room, metadata) if room_lost
                                  else _dispatch(settings, room, metadata))
    except Exception as err:
        _set_holder(settings, session_id, marker, lost_worker_id)  # a retry starts afresh
        raise classify_livekit_error(err) from None
    if app is not None:
        schedule_check(app, session_id, marker)  # a resume no worker takes is sent again
    logger.info("agent dispatched again after its job was lost",
                extra={"session_id": session_id, "room": room, "dispatch_id": dispatch_id,
                       "lost": lost_worker_id, "room_lost": room_lost})
    return {**out, "action": "dispatched", "dispatch_id": dispatch_id}


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.resume.resume_session",
    soft_time_limit=45,  # a node loss's dispatch may take up to ROUTABLE_WITHIN_SECONDS
    time_limit=60,
    max_retries=3,
    retry_backoff_max=5,
)
def resume_session(
    self: AvatarTask, session_id: str, lost_worker_id: str, room_lost: bool = False
) -> dict[str, Any]:
    """Put an agent back into a session whose job is gone while its caller stays.

    Sent by the webhook (the agent left) or by the job itself (``room_lost``: its room's
    node is gone). Safe to run twice: the session is taken from the lost job by
    compare-and-set before the dispatch, so a second run finds it no longer held by that
    job and does nothing.
    """
    try:
        return resume(self.settings, session_id, lost_worker_id, self.app, room_lost=room_lost)
    except TransientError:
        raise  # retried (autoretry_for)


def _beat_iso(beat: datetime | None) -> str | None:
    """A heartbeat as UTC text (SQLite gives naive UTC, PostgreSQL the session's zone)."""
    if beat is None:
        return None
    return (beat.astimezone(UTC) if beat.tzinfo else beat.replace(tzinfo=UTC)).isoformat()


def holder_silence_wait(beat_iso: str | None, now: datetime | None = None) -> float:
    """Seconds until a holder whose last heartbeat was ``beat_iso`` counts as gone."""
    if beat_iso is None:
        return HOLDER_SILENT_SECONDS
    beat = datetime.fromisoformat(beat_iso)
    elapsed = ((now or datetime.now(UTC)) - beat).total_seconds()
    return max(0.0, HOLDER_SILENT_SECONDS - elapsed)


def schedule_holder_check(
    app: Any, session_id: str, holder: str, beat: datetime | None, attempt: int = 1
) -> Any:
    """The signature that looks at the holder once its heartbeat would be stale if it died."""
    beat_iso = _beat_iso(beat)
    return app.signature("tasks.resume.resume_if_holder_gone",
                         args=(session_id, holder, beat_iso, attempt),
                         countdown=holder_silence_wait(beat_iso) + 0.5)


def resume_if_gone(
    settings: Settings, session_id: str, holder: str, beat_iso: str | None, app: Any = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """Resume the session if ``holder`` still holds it and its heartbeat stayed at
    ``beat_iso`` for HOLDER_SILENT_SECONDS: its job is gone with the room's node."""
    out: dict[str, Any] = {"session_id": session_id}
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        if rec is None or rec.status != SessionStatus.ACTIVE:
            return {**out, "action": "not_open"}
        if rec.worker_id != holder:
            return {**out, "action": "not_held"}
        now_iso = _beat_iso(rec.heartbeat_at)
    if now_iso != beat_iso:
        return {**out, "action": "holder_alive"}  # it beat since the room was created again
    wait = holder_silence_wait(beat_iso)
    if wait > 0:
        if app is not None and attempt < HOLDER_CHECKS:
            app.signature("tasks.resume.resume_if_holder_gone",
                          args=(session_id, holder, beat_iso, attempt + 1),
                          countdown=wait + 0.5).apply_async()
        return {**out, "action": "waiting", "wait_s": round(wait, 2)}
    logger.warning("the session's job went silent with its room's node; resuming",
                   extra={"session_id": session_id, "holder": holder, "last_beat": beat_iso})
    return resume(settings, session_id, holder, app)


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.resume.resume_if_holder_gone",
    soft_time_limit=45,
    time_limit=60,
    max_retries=3,
    retry_backoff_max=5,
)
def resume_if_holder_gone(
    self: AvatarTask, session_id: str, holder: str, beat_iso: str | None, attempt: int = 1
) -> dict[str, Any]:
    """The session's room was created again under it (its node died, the caller came back):
    resume it once its job's heartbeat has gone quiet. Safe to run twice (compare-and-set)."""
    return resume_if_gone(self.settings, session_id, holder, beat_iso, self.app, attempt)
