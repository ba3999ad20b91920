"""LiveKit webhooks: verify, de-duplicate, and start or finish sessions.

The Flask route (web/) only reads the raw body and the `Authorization` header, calls
:func:`handle_livekit_webhook` and maps :class:`WebhookSignatureError` to 401.

LiveKit retries a webhook it thinks failed, and one room produces several events
(`room_started`, then `participant_joined` for each participant), so every path here is
idempotent: the event id is stored in `webhook_events` in the same transaction as the action;
a room gets at most one webhook session (request key `webhook:<room sid>`); a room that already
has an open session (created through the API, whose provisioning made the room) is left alone;
and provisioning itself never dispatches twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from livekit import api
from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.policy import spec_violations
from config.session import SessionSpec
from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, WebhookEvent, utcnow
from store.resume import RESUME_MARKER_PREFIX, SESSION_ATTR, WORKER_ATTR
from tasks.base import ServiceError, enqueue_after_commit
from tasks.provisioning import get_or_create_session
from tasks.resume import schedule_holder_check

logger = logging.getLogger(__name__)

START_EVENTS = ("room_started", "participant_joined")
FINISH_EVENTS = ("room_finished",)
AGENT_KIND = api.ParticipantInfo.Kind.AGENT
# Longer values do not fit the columns (PostgreSQL refuses them; SQLite would store them).
ROOM_NAME_MAX = 128
EVENT_ID_MAX = 64


class WebhookSignatureError(ServiceError):
    """The webhook's JWT or body hash did not verify (HTTP 401)."""


class WebhookPayloadError(ServiceError):
    """The body verified but is not a webhook event (HTTP 400)."""


@dataclass(frozen=True)
class WebhookOutcome:
    """What the handler did; the route returns it as JSON."""

    event: str
    event_id: str
    # duplicate | ignored | session_created | session_exists | session_ended | resume_requested
    action: str
    room: str | None = None
    session_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "event_id": self.event_id,
            "action": self.action,
            "room": self.room,
            "session_id": self.session_id,
        }


def verify_webhook(settings: Settings, body: str, auth_header: str) -> api.WebhookEvent:
    """Check the JWT (our API key/secret) and the sha256 of the raw body."""
    if not auth_header:
        raise WebhookSignatureError("missing Authorization header")
    token = auth_header.removeprefix("Bearer ").strip()
    receiver = api.WebhookReceiver(
        api.TokenVerifier(
            settings.livekit.api_key.get_secret_value(),
            settings.livekit.api_secret.get_secret_value(),
        )
    )
    try:
        return receiver.receive(body, token)
    except Exception as err:  # jwt errors, hash mismatch, then protobuf parse errors
        if type(err).__name__ == "ParseError":
            raise WebhookPayloadError("body is not a LiveKit webhook event") from None
        raise WebhookSignatureError("webhook signature did not verify") from None


def spec_from_room_metadata(metadata: str) -> SessionSpec | None:
    """The session a room asks for in its metadata, or None if it asks for none.

    `{"avatar_agent": true}` asks for the defaults; `{"avatar_agent": {...SessionSpec...}}`
    for a configured session. Invalid specs are ignored (logged): a room cannot break us.
    """
    if not metadata:
        return None
    try:
        data = json.loads(metadata)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    wanted = data.get("avatar_agent")
    if wanted is True:
        return SessionSpec()
    if isinstance(wanted, dict):
        try:
            return SessionSpec.model_validate({**wanted, "session_id": None})
        except ValidationError:
            logger.warning("room metadata holds an invalid session spec")
            return None
    return None


def wants_agent(settings: Settings, room: Any) -> SessionSpec | None:
    """The spec to start for a room reported by LiveKit, or None if no rule matches."""
    spec = spec_from_room_metadata(room.metadata)
    if spec is not None:
        problems = spec_violations(spec, settings)
        if problems:  # room metadata is not the operator's: it picks only what they allow
            logger.warning(
                "room metadata asks for a session this server does not allow",
                extra={"room": room.name, "fields": sorted(problems)},
            )
            return None
        return spec
    prefix = settings.livekit.webhook_rules_prefix
    if prefix and room.name.startswith(prefix):
        return SessionSpec()
    return None


def handle_livekit_webhook(
    settings: Settings, body: str, auth_header: str, *, app: Celery | None = None
) -> WebhookOutcome:
    """Verify one webhook delivery and act on it at most once.

    Args:
        settings: gives the LiveKit key/secret, the database and the broker.
        body: the raw request body, exactly as received (its sha256 is signed).
        auth_header: the `Authorization` header value.
        app: the Celery app to enqueue with (default: one for `settings`' broker).

    Raises:
        WebhookSignatureError: bad or missing signature (map to 401).
        WebhookPayloadError: not an event (map to 400).
    """
    event = verify_webhook(settings, body, auth_header)
    event_id = event.id if 0 < len(event.id) <= EVENT_ID_MAX else (
        "sha256:" + hashlib.sha256((event.id or body).encode()).hexdigest()[:48]
    )
    room_name = event.room.name or None
    if app is None:
        from tasks.app import app_for

        app = app_for(settings)
    try:
        with session_scope(settings.db.url) as db:
            if db.get(WebhookEvent, event_id) is not None:
                return WebhookOutcome(event.event, event_id, "duplicate", room_name)
            db.add(WebhookEvent(id=event_id, event=event.event[:32],
                                room=room_name[:ROOM_NAME_MAX] if room_name else None))
            db.flush()  # a concurrent delivery of the same event fails here or at commit
            outcome = _act(db, settings, app, event, event_id)
    except IntegrityError:
        return WebhookOutcome(event.event, event_id, "duplicate", room_name)
    logger.info(
        "webhook handled",
        extra={"event": event.event, "event_id": event_id, "action": outcome.action,
               "room": room_name, "session_id": outcome.session_id},
    )
    return outcome


def _act(
    db: Session, settings: Settings, app: Celery, event: api.WebhookEvent, event_id: str
) -> WebhookOutcome:
    room = event.room
    if event.event in START_EVENTS and room.name:
        if event.event == "participant_joined" and event.participant.kind == AGENT_KIND:
            return WebhookOutcome(event.event, event_id, "ignored", room.name)
        if room.sid:
            recreated = _session_of_recreated_room(
                db, room.name, room.sid, started=event.event == "room_started")
            if recreated is not None:
                return _recreated_room(db, app, event, event_id, recreated)
        spec = wants_agent(settings, room)
        if spec is None:
            return WebhookOutcome(event.event, event_id, "ignored", room.name)
        return _start(db, settings, app, event, event_id, spec)
    if event.event in FINISH_EVENTS and room.name:
        return _finish(db, app, event, event_id)
    if event.event == "participant_left" and event.participant.kind == AGENT_KIND:
        return _agent_left(db, app, event, event_id)
    return WebhookOutcome(event.event, event_id, "ignored", room.name or None)


def _open_session_for_room(db: Session, room_name: str, room_sid: str) -> AgentSessionRecord | None:
    return db.scalars(
        select(AgentSessionRecord)
        .where(
            AgentSessionRecord.room == room_name,
            AgentSessionRecord.status.in_(list(SessionStatus.open_states())),
            or_(AgentSessionRecord.room_sid.is_(None), AgentSessionRecord.room_sid == room_sid),
        )
        .order_by(AgentSessionRecord.created_at.desc())
    ).first()


def _session_of_recreated_room(
    db: Session, room_name: str, room_sid: str, *, started: bool
) -> AgentSessionRecord | None:
    """An active session whose room was created again: ``room_started`` for its room (a
    session becomes active in a room that exists), or an event of another room of its name.

    LiveKit never sends ``room_finished`` for the rooms of a node that died; when the caller's
    SDK reconnects, the room is created again on a live node, with no agent in it (a cluster
    keeps the room's sid in Redis; one server alone gives it a new one). If the session's job
    died with the node (one machine running both), nothing else reports the loss: this room's
    webhooks are the first sign of it.
    """
    where = [AgentSessionRecord.room == room_name,
             AgentSessionRecord.status == SessionStatus.ACTIVE]
    if not started:
        where += [AgentSessionRecord.room_sid.is_not(None),
                  AgentSessionRecord.room_sid != room_sid]
    return db.scalars(
        select(AgentSessionRecord).where(*where).order_by(AgentSessionRecord.created_at.desc())
    ).first()


def _recreated_room(
    db: Session, app: Celery, event: api.WebhookEvent, event_id: str, record: AgentSessionRecord
) -> WebhookOutcome:
    """The session's room was created again: the session follows the new room (no second
    session for it), and its holder is looked at once its heartbeat would be stale if it died
    with the node (:func:`tasks.resume.resume_if_holder_gone`). A job that is alive reports
    the loss itself; a resume already on its way (a marker holds the session) is left alone.
    """
    room = event.room
    holder = record.worker_id
    logger.warning(
        "the room of an active session was created again: it was lost",
        extra={"session_id": record.id, "room": room.name, "old_sid": record.room_sid,
               "new_sid": room.sid, "holder": holder, "event": event.event},
    )
    record.room_sid = room.sid
    if holder is None or holder.startswith(RESUME_MARKER_PREFIX):
        return WebhookOutcome(event.event, event_id, "session_exists", room.name, record.id)
    enqueue_after_commit(db, schedule_holder_check(app, record.id, holder, record.heartbeat_at))
    return WebhookOutcome(event.event, event_id, "holder_check", room.name, record.id)


def _start(
    db: Session,
    settings: Settings,
    app: Celery,
    event: api.WebhookEvent,
    event_id: str,
    spec: SessionSpec,
) -> WebhookOutcome:
    room = event.room
    if len(room.name) > ROOM_NAME_MAX:
        logger.warning("room name too long for a session", extra={"length": len(room.name)})
        return WebhookOutcome(event.event, event_id, "ignored", room.name)
    existing = _open_session_for_room(db, room.name, room.sid)
    if existing is not None:
        if event.event == "participant_joined" and existing.caller_identity is None:
            existing.caller_identity = event.participant.identity[:128] or None
        return WebhookOutcome(event.event, event_id, "session_exists", room.name, existing.id)
    record, created = get_or_create_session(
        db,
        settings,
        spec,
        room=room.name,
        source="webhook",
        request_key=f"webhook:{room.sid or room.name}",
        room_sid=room.sid or None,
    )
    if event.event == "participant_joined" and record.caller_identity is None:
        record.caller_identity = event.participant.identity[:128] or None
    if not created:
        return WebhookOutcome(event.event, event_id, "session_exists", room.name, record.id)
    enqueue_after_commit(
        db, app.signature("tasks.provisioning.provision_session", args=(record.id,))
    )
    return WebhookOutcome(event.event, event_id, "session_created", room.name, record.id)


def _agent_left(
    db: Session, app: Celery, event: api.WebhookEvent, event_id: str
) -> WebhookOutcome:
    """Our agent left a session that is still open: its job was lost (a session that ends
    normally is stored as ended before the agent leaves). Dispatch it again."""
    attrs = event.participant.attributes
    session_id, worker_id = attrs.get(SESSION_ATTR), attrs.get(WORKER_ATTR)
    room = event.room.name or None
    if not session_id or not worker_id:
        return WebhookOutcome(event.event, event_id, "ignored", room)
    record = db.get(AgentSessionRecord, session_id)
    if record is None or record.status != SessionStatus.ACTIVE or record.worker_id != worker_id:
        return WebhookOutcome(event.event, event_id, "ignored", room, session_id)
    enqueue_after_commit(
        db, app.signature("tasks.resume.resume_session", args=(session_id, worker_id))
    )
    return WebhookOutcome(event.event, event_id, "resume_requested", room, session_id)


def _finish(db: Session, app: Celery, event: api.WebhookEvent, event_id: str) -> WebhookOutcome:
    room = event.room
    ended_at = (
        datetime.fromtimestamp(event.created_at, UTC) if event.created_at > 0 else utcnow()
    )
    conds = [AgentSessionRecord.room == room.name]
    if room.sid:
        conds = [
            or_(
                AgentSessionRecord.room_sid == room.sid,
                (AgentSessionRecord.room == room.name) & AgentSessionRecord.room_sid.is_(None),
            )
        ]
    # FOR UPDATE (PostgreSQL): a concurrent room_finished (another event id) waits for this
    # one, then finds the session ended: it is ended and finalized once. SQLite has one writer.
    records = db.scalars(
        select(AgentSessionRecord)
        .where(*conds, AgentSessionRecord.status.in_(list(SessionStatus.open_states())))
        .with_for_update()
    ).all()
    if not records:
        return WebhookOutcome(event.event, event_id, "ignored", room.name)
    for record in records:
        record.status = SessionStatus.ENDED
        record.ended_at = ended_at
        record.end_reason = record.end_reason or "room_finished"
        enqueue_after_commit(
            db, app.signature("tasks.maintenance.finalize_session", args=(record.id,))
        )
    return WebhookOutcome(event.event, event_id, "session_ended", room.name, records[0].id)
