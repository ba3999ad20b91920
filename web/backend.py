"""The seam between the web process and the back office (Celery tasks, LiveKit API).

Views only validate input, call one of these functions, enqueue and return. The default
implementations import `tasks.*` lazily, so the web process starts (and its tests run) without
a broker; tests swap single functions through ``app.extensions["backend"]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sqlalchemy.orm import Session

from config.session import SessionSpec
from config.settings import Settings
from store.models import AgentSessionRecord

logger = logging.getLogger(__name__)

class CreateSession(Protocol):
    def __call__(
        self,
        db: Session,
        settings: Settings,
        spec: SessionSpec,
        *,
        room: str | None,
        source: str,
        request_key: str | None,
    ) -> tuple[AgentSessionRecord, bool]: ...


class MintToken(Protocol):
    def __call__(
        self,
        settings: Settings,
        *,
        room: str,
        identity: str,
        name: str | None = None,
        ttl: int | None = None,
        can_publish_data: bool = False,
    ) -> str: ...


class WebhookRejected(Exception):
    """The webhook's signature or body hash did not verify (answered with 401)."""


class WebhookInvalid(Exception):
    """The body verified but is not a webhook event (answered with 400)."""


def _create_session(
    db: Session,
    settings: Settings,
    spec: SessionSpec,
    *,
    room: str | None,
    source: str,
    request_key: str | None,
) -> tuple[AgentSessionRecord, bool]:
    """The record, and whether this call created it: a concurrent request with the same
    `request_key` may have inserted it first (then it must not be provisioned again)."""
    from tasks.provisioning import get_or_create_session

    return get_or_create_session(
        db, settings, spec, room=room, source=source, request_key=request_key
    )


class QueueUnavailable(Exception):
    """The broker refused the message (answered with 503; nothing is left half-made)."""


def _enqueue_provision(settings: Settings, session_id: str) -> None:
    """Called only after the session row is committed (the task re-fetches it by id).

    Sent through the Celery app for these settings' broker (routes put it on its queue).
    Nobody waits for its result, so sending never touches the result backend (whose
    reconnect loop is what kept a request busy for many seconds with the broker down).

    :raise QueueUnavailable: the broker is unreachable.
    """
    from tasks.app import app_for

    try:
        app_for(settings).send_task(
            "tasks.provisioning.provision_session", args=(session_id,), ignore_result=True
        )
    except Exception as err:
        raise QueueUnavailable(f"the task queue is unreachable ({type(err).__name__})") from err


def provision_or_discard(
    db: Session,
    settings: Settings,
    record: AgentSessionRecord,
    enqueue: Callable[[Settings, str], None],
) -> None:
    """Enqueue provisioning of a just-committed session; if the broker refuses, delete the
    session again, so a retried request starts afresh and no stored session waits for a
    provisioning that never comes.

    :raise QueueUnavailable: after the session was deleted.
    """
    try:
        enqueue(settings, record.id)
    except QueueUnavailable:
        logger.warning(
            "broker unreachable: session discarded",
            extra={"session_id": record.id, "room": record.room},
        )
        db.rollback()
        db.delete(record)
        db.commit()
        raise


def _mint_token(
    settings: Settings,
    *,
    room: str,
    identity: str,
    name: str | None = None,
    ttl: int | None = None,
    can_publish_data: bool = False,
) -> str:
    from tasks.provisioning import mint_participant_token

    return mint_participant_token(
        settings, room=room, identity=identity, name=name, ttl=ttl,
        can_publish_data=can_publish_data,
    )


def _end_session(settings: Settings, record: AgentSessionRecord) -> None:
    """Delete the LiveKit room: the agent leaves, and LiveKit's `room_finished` webhook
    (or the reconcile beat job) starts the finalize chain in the back office.

    One bounded API call (the client has a 10 s timeout), not a wait on a task; a room that
    no longer exists is fine.
    """
    from livekit import api

    from tasks.provisioning import livekit_api

    async def _delete() -> None:
        async with livekit_api(settings) as lk:
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=record.room))
            except api.TwirpError as err:
                if err.code != "not_found":
                    raise

    asyncio.run(_delete())


def _handle_webhook(settings: Settings, body: str, auth_header: str) -> dict[str, Any]:
    from tasks import webhooks

    try:
        outcome = webhooks.handle_livekit_webhook(settings, body, auth_header)
    except webhooks.WebhookSignatureError as err:
        raise WebhookRejected(str(err)) from None
    except webhooks.WebhookPayloadError as err:
        raise WebhookInvalid(str(err)) from None
    return outcome.as_dict()


@dataclass(frozen=True)
class Backend:
    """Every call the web process makes into the back office; replace fields in tests."""

    create_session: CreateSession = _create_session
    enqueue_provision: Callable[[Settings, str], None] = _enqueue_provision
    mint_token: MintToken = _mint_token
    end_session: Callable[[Settings, AgentSessionRecord], None] = _end_session
    handle_webhook: Callable[[Settings, str, str], dict[str, Any]] = _handle_webhook
    extras: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> Backend:
        return replace(self, **changes)

