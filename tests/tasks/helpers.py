"""Small helpers shared by the back-office tests."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToJson
from livekit import api

from config.session import SessionSpec
from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord
from tasks.provisioning import create_session


def new_session(settings: Settings, *, room: str | None = None, **fields: Any) -> str:
    """Record a session through the service function and commit it; returns its id."""
    with session_scope(settings.db.url) as db:
        record = create_session(
            db, settings, SessionSpec(), room=room, source="api", request_key=None
        )
        for key, value in fields.items():
            setattr(record, key, value)
        return record.id


def get_session(settings: Settings, session_id: str) -> AgentSessionRecord:
    with session_scope(settings.db.url) as db:
        record = db.get(AgentSessionRecord, session_id)
        assert record is not None
        return record


def session_when(
    settings: Settings, session_id: str, check: Callable[[AgentSessionRecord], object]
) -> Callable[[], AgentSessionRecord | None]:
    """A `wait_for` condition: the session once `check(session)` is truthy."""

    def probe() -> AgentSessionRecord | None:
        record = get_session(settings, session_id)
        return record if check(record) else None

    return probe


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def livekit_client(settings: Settings) -> api.LiveKitAPI:
    return api.LiveKitAPI(
        url=settings.livekit.http_url,
        api_key=settings.livekit.api_key.get_secret_value(),
        api_secret=settings.livekit.api_secret.get_secret_value(),
    )


def signed_webhook(
    settings: Settings, event: api.WebhookEvent, *, secret: str | None = None
) -> tuple[str, str]:
    """(body, Authorization header) the way livekit-server signs a webhook."""
    body = MessageToJson(event)
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    token = (
        api.AccessToken(
            settings.livekit.api_key.get_secret_value(),
            secret or settings.livekit.api_secret.get_secret_value(),
        )
        .with_sha256(digest)
        .to_jwt()
    )
    return body, token


def room_event(
    kind: str,
    room: str,
    *,
    sid: str | None = None,
    metadata: str = "",
    event_id: str | None = None,
    identity: str | None = None,
    agent: bool = False,
    created_at: int = 0,
) -> api.WebhookEvent:
    ev = api.WebhookEvent(
        event=kind,
        id=event_id or f"EV_{uuid.uuid4().hex[:12]}",
        room=api.Room(name=room, sid=sid or f"RM_{uuid.uuid4().hex[:12]}", metadata=metadata),
        created_at=created_at,
    )
    if identity is not None:
        ev.participant.CopyFrom(
            api.ParticipantInfo(
                identity=identity,
                kind=api.ParticipantInfo.Kind.AGENT if agent else api.ParticipantInfo.Kind.STANDARD,
            )
        )
    return ev
