"""Sessions: record one, mint a caller token, and provision it (room + agent dispatch).

`create_session` and `mint_participant_token` are plain functions that web views call;
`provision_session` is the Celery task (queue `live`) that talks to LiveKit.

Provisioning must never dispatch the agent twice, although its message can be delivered more
than once (acks_late, a retry after a timeout whose request did succeed, a webhook retried by
LiveKit, two views racing): a worker first claims the session (compare-and-set on its status,
with a lease in case it dies), then looks at the record's dispatch id and at LiveKit's own
dispatch list for the room before it creates a dispatch.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from celery import shared_task
from livekit import api
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.policy import enforce_spec
from config.session import SessionSpec
from config.settings import Settings
from store.models import AgentSessionRecord, SessionStatus, new_id, utcnow
from tasks.base import AvatarTask, NotFoundError, ServiceError, TransientError

logger = logging.getLogger(__name__)

# A worker that claimed a session and then vanished loses the claim after this long
# (longer than the task's hard time limit, so a live claim is never stolen).
CLAIM_LEASE = timedelta(seconds=120)
API_TIMEOUT_SECONDS = 10.0


class ProvisioningError(ServiceError):
    """LiveKit refused the request (4xx): retrying will not help."""


class ProvisioningBusy(TransientError):
    """Another worker holds the claim on this session right now."""


@dataclass(frozen=True)
class Dispatched:
    room_sid: str
    dispatch_id: str
    reused: bool


# --------------------------------------------------------------------------- services


def resolve_providers(settings: Settings, spec: SessionSpec) -> dict[str, str]:
    """Provider names for the record: the spec's choice, else the configured one."""
    return {
        "stt_provider": spec.stt.provider or settings.stt.provider,
        "llm_provider": spec.llm.provider or settings.llm.provider,
        "tts_provider": spec.tts.provider or settings.tts.provider,
        "avatar_provider": spec.avatar.provider or settings.avatar.provider,
    }


def create_session(
    db: Session,
    settings: Settings,
    spec: SessionSpec,
    *,
    room: str | None,
    source: str,
    request_key: str | None,
) -> AgentSessionRecord:
    """Record a session (status pending); the same `request_key` returns the same record."""
    record, _ = get_or_create_session(
        db, settings, spec, room=room, source=source, request_key=request_key
    )
    return record


def get_or_create_session(
    db: Session,
    settings: Settings,
    spec: SessionSpec,
    *,
    room: str | None,
    source: str,
    request_key: str | None,
    room_sid: str | None = None,
) -> tuple[AgentSessionRecord, bool]:
    """Like :func:`create_session`, and says whether the record is new.

    :raise SpecError: the spec asks for more than the operator's settings allow.
    """
    enforce_spec(spec, settings)
    if request_key:
        found = db.scalars(
            select(AgentSessionRecord).where(AgentSessionRecord.request_key == request_key)
        ).first()
        if found is not None:
            return found, False
    session_id = new_id()
    spec = spec.model_copy(update={"session_id": session_id})
    record = AgentSessionRecord(
        id=session_id,
        room=room or f"avatar-{session_id[:12]}",
        status=SessionStatus.PENDING,
        request_key=request_key,
        source=source,
        spec=spec.model_dump(mode="json"),
        room_sid=room_sid,
        **resolve_providers(settings, spec),
    )
    try:
        with db.begin_nested():  # a concurrent request with the same key may win the insert
            db.add(record)
    except IntegrityError:
        found = db.scalars(
            select(AgentSessionRecord).where(AgentSessionRecord.request_key == request_key)
        ).first()
        if found is None:
            raise
        return found, False
    logger.info(
        "session recorded",
        extra={"session_id": session_id, "room": record.room, "source": source},
    )
    return record, True


def mint_participant_token(
    settings: Settings,
    *,
    room: str,
    identity: str,
    name: str | None = None,
    ttl: int | timedelta | None = None,
    can_publish_data: bool = False,
) -> str:
    """A short-lived join token for one participant in one room, with no admin grants;
    minted on demand, never stored. Data (typed chat) only for sessions that allow it."""
    if isinstance(ttl, timedelta):
        lifetime = ttl
    else:
        lifetime = timedelta(seconds=ttl or settings.livekit.token_ttl_seconds)
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=can_publish_data,
    )
    return (
        api.AccessToken(
            settings.livekit.api_key.get_secret_value(),
            settings.livekit.api_secret.get_secret_value(),
        )
        .with_identity(identity)
        .with_name(name or identity)
        .with_ttl(lifetime)
        .with_grants(grants)
        .to_jwt()
    )


def livekit_api(settings: Settings) -> api.LiveKitAPI:
    """A LiveKit server API client with a bounded timeout (create inside a running loop)."""
    return api.LiveKitAPI(
        url=settings.livekit.http_url,
        api_key=settings.livekit.api_key.get_secret_value(),
        api_secret=settings.livekit.api_secret.get_secret_value(),
        timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_SECONDS),
    )


def classify_livekit_error(err: BaseException) -> ServiceError:
    """Transport errors, timeouts and 5xx are transient; other server answers are final."""
    if isinstance(err, api.ServerError):
        transient_codes = {"unavailable", "deadline_exceeded", "resource_exhausted", "internal"}
        if err.status >= 500 or err.status in (408, 429) or err.code in transient_codes:
            return TransientError(f"LiveKit API error {err.status} {err.code}")
        return ProvisioningError(f"LiveKit refused: {err.status} {err.code} {err.message}")
    if isinstance(err, (aiohttp.ClientError, TimeoutError, OSError)):
        # The message may carry the URL; keep only the type.
        return TransientError(f"LiveKit API unreachable ({type(err).__name__})")
    return ServiceError(f"LiveKit call failed ({type(err).__name__})")


async def dispatch_agent(
    settings: Settings, *, room: str, metadata: str, session_id: str
) -> Dispatched:
    """Create (or reuse) the room and dispatch the agent unless a dispatch already exists."""
    agent_name = settings.livekit.agent_name
    try:
        async with livekit_api(settings) as lk:
            info = await lk.room.create_room(api.CreateRoomRequest(name=room))
            for existing in await lk.agent_dispatch.list_dispatch(room):
                if existing.agent_name == agent_name and _dispatch_session(existing) in (
                    session_id,
                    None,
                ):
                    return Dispatched(info.sid, existing.id, reused=True)
            created = await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
            )
            return Dispatched(info.sid, created.id, reused=False)
    except (TimeoutError, api.ServerError, aiohttp.ClientError, OSError) as err:
        raise classify_livekit_error(err) from None


def _dispatch_session(dispatch: Any) -> str | None:
    try:
        meta = json.loads(dispatch.metadata or "{}")
    except ValueError:
        return None
    return meta.get("session_id") if isinstance(meta, dict) else None


def join_info(settings: Settings, record: AgentSessionRecord) -> dict[str, Any]:
    """What a caller needs besides a token (mint one with :func:`mint_participant_token`)."""
    return {
        "session_id": record.id,
        "room": record.room,
        "url": settings.livekit.browser_url,
        "status": record.status,
        "dispatch_id": record.dispatch_id,
    }


def claim_for_provisioning(db: Session, session_id: str) -> bool:
    """Compare-and-set pending -> provisioning (or take over a stale claim)."""
    now = utcnow()
    result = db.execute(
        update(AgentSessionRecord)
        .where(
            AgentSessionRecord.id == session_id,
            AgentSessionRecord.dispatch_id.is_(None),
            or_(
                AgentSessionRecord.status == SessionStatus.PENDING,
                (AgentSessionRecord.status == SessionStatus.PROVISIONING)
                & (
                    AgentSessionRecord.provisioned_at.is_(None)
                    | (AgentSessionRecord.provisioned_at < now - CLAIM_LEASE)
                ),
            ),
        )
        .values(status=SessionStatus.PROVISIONING, provisioned_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def release_claim(db: Session, session_id: str, *, error: str | None) -> None:
    db.execute(
        update(AgentSessionRecord)
        .where(
            AgentSessionRecord.id == session_id,
            AgentSessionRecord.status == SessionStatus.PROVISIONING,
        )
        .values(status=SessionStatus.PENDING, provisioned_at=None, error=error)
        .execution_options(synchronize_session=False)
    )


def fail_session(db: Session, session_id: str, error: str) -> None:
    db.execute(
        update(AgentSessionRecord)
        .where(
            AgentSessionRecord.id == session_id,
            AgentSessionRecord.status.in_([SessionStatus.PENDING, SessionStatus.PROVISIONING]),
        )
        .values(status=SessionStatus.FAILED, error=error[:2000], ended_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def provision(settings: Settings, session_id: str, *, final_attempt: bool = True) -> dict[str, Any]:
    """Provision one session: the body of :func:`provision_session`, callable without Celery.

    Raises:
        NotFoundError: no such session.
        ProvisioningBusy: another worker is provisioning it (retry later).
        TransientError: LiveKit unreachable; the claim is released first.
    """
    from store.db import session_scope

    with session_scope(settings.db.url) as db:
        record = db.get(AgentSessionRecord, session_id)
        if record is None:
            raise NotFoundError(f"session {session_id} not found")
        if record.dispatch_id or record.status not in (
            SessionStatus.PENDING,
            SessionStatus.PROVISIONING,
        ):
            return join_info(settings, record)  # already done (or ended/failed): nothing to do
        if not claim_for_provisioning(db, session_id):
            raise ProvisioningBusy(f"session {session_id} is being provisioned")
        room = record.room
        spec = SessionSpec.model_validate({**record.spec, "session_id": session_id})
    metadata = spec.model_dump_json(exclude_none=False)
    try:
        result = asyncio.run(
            dispatch_agent(settings, room=room, metadata=metadata, session_id=session_id)
        )
    except TransientError as err:
        with session_scope(settings.db.url) as db:
            if final_attempt:
                fail_session(db, session_id, str(err))
            else:
                release_claim(db, session_id, error=str(err))
        raise
    except ServiceError as err:
        with session_scope(settings.db.url) as db:
            fail_session(db, session_id, str(err))
        logger.error("provisioning failed", extra={"session_id": session_id, "error": str(err)})
        raise
    with session_scope(settings.db.url) as db:
        db.execute(
            update(AgentSessionRecord)
            .where(
                AgentSessionRecord.id == session_id,
                AgentSessionRecord.status == SessionStatus.PROVISIONING,
            )
            .values(
                status=SessionStatus.DISPATCHED,
                dispatch_id=result.dispatch_id,
                room_sid=result.room_sid,
                provisioned_at=datetime.now(UTC),
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        record = db.get(AgentSessionRecord, session_id)
        assert record is not None
        db.refresh(record)
        logger.info(
            "agent dispatched",
            extra={
                "session_id": session_id,
                "room": room,
                "dispatch_id": result.dispatch_id,
                "reused": result.reused,
            },
        )
        return join_info(settings, record)


# --------------------------------------------------------------------------- tasks


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.provisioning.provision_session",
    ignore_result=False,
    soft_time_limit=30,
    time_limit=60,
    max_retries=8,
    retry_backoff_max=30,
)
def provision_session(self: AvatarTask, session_id: str) -> dict[str, Any]:
    """Create the room and dispatch the agent; returns join info (room, url), never a token.

    Safe to run twice: a record that already has a dispatch id is returned as is; a second
    worker cannot claim a session another one is provisioning; and LiveKit's dispatch list for
    the room is checked before a dispatch is created, which covers a crash between LiveKit's
    answer and our commit.
    """
    final = self.request.retries >= self.max_retries
    try:
        info = provision(self.settings, session_id, final_attempt=final)
        if info.get("status") == SessionStatus.DISPATCHED:
            from tasks.resume import schedule_check

            schedule_check(self.app, session_id)  # LiveKit drops a job no worker accepts
        return info
    except NotFoundError:
        logger.warning("no such session", extra={"session_id": session_id})
        return {"session_id": session_id, "status": "missing"}
    except ProvisioningError as err:
        return {"session_id": session_id, "status": SessionStatus.FAILED, "error": str(err)}
