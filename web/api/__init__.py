"""JSON API (`/api/v1`): start sessions, read their status, transcript, summary and usage.

Authentication: ``Authorization: Bearer <token>`` (see `web.auth.create_api_token`).
Errors: ``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from flask_limiter import Limiter
from limits import parse_many
from pydantic import ValidationError
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from config.policy import spec_violations
from store.models import AgentSessionRecord, SessionStatus, Summary

from .. import queries
from ..auth import verify_api_token
from ..backend import provision_or_discard
from ..db import get_db
from ..settings import app_settings, backend
from .openapi import build_openapi
from .schemas import (
    CreateSessionRequest,
    EndingView,
    SessionCreated,
    SessionDetail,
    SummaryView,
    TranscriptView,
    UsageView,
    body,
    field_errors,
)

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("api", __name__, url_prefix="/api/v1")
alias_bp = Blueprint("api_alias", __name__, url_prefix="/api")

IDEMPOTENCY_KEY_MAX = 100
OPEN_STATUSES = SessionStatus.open_states()
ROOM_GUARD_SECONDS = 30  # a crashed request frees its room after this


class ApiError(Exception):
    """Any API failure; rendered as the JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}

    retry_after: int | None = None

    def response(self) -> tuple[Response, int]:
        body = {"error": {"code": self.code, "message": self.message, "fields": self.fields}}
        res = jsonify(body)
        if self.retry_after is not None:
            res.headers["Retry-After"] = str(self.retry_after)
        return res, self.status


def token_required(scope: str) -> Callable[[F], F]:
    """Reject requests without a valid bearer token (401) or without `scope` (403)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
            row = verify_api_token(get_db(), token.strip())
            if row is None:
                raise ApiError(401, "unauthorized", "invalid, expired or revoked API token")
            if scope not in row.scopes.split():
                raise ApiError(403, "forbidden", f"this token lacks the {scope} scope")
            g.api_token = row
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorate


def _check_session_quota() -> None:
    """Count one new session against the token's rate and daily quota (shared store).

    :raise ApiError 429: over either, with Retry-After.
    """
    limiter: Limiter = current_app.extensions["avatar_limiter"]
    ident = f"api-sessions:{g.api_token.id}"
    for item in parse_many(app_settings().web.session_rate_limit):
        if not limiter.limiter.hit(item, ident):
            reset = limiter.limiter.get_window_stats(item, ident).reset_time
            err = ApiError(429, "rate_limited", f"this token may start at most {item} sessions")
            err.retry_after = max(1, int(reset - time.time()))
            raise err


@contextmanager
def _room_guard(room: str | None) -> Iterator[None]:
    """One request at a time may start a session in a room, across every web process (a
    counter in the rate-limit store), so two concurrent calls cannot both dispatch an agent.

    :raise ApiError 409: another request is starting a session in that room right now.
    """
    if room is None:
        yield
        return
    storage = current_app.extensions["avatar_limiter"].storage
    guard = f"avatar-room-start:{room}"
    if storage.incr(guard, ROOM_GUARD_SECONDS) > 1:
        raise ApiError(
            409, "room_busy",
            f"another request is starting a session in room {room!r}; retry in a moment",
            {"room": "a session is being started"},
        )
    try:
        yield
    finally:
        storage.clear(guard)


def _open_session_in_room(room: str) -> AgentSessionRecord | None:
    return get_db().scalars(
        select(AgentSessionRecord)
        .where(AgentSessionRecord.room == room, AgentSessionRecord.status.in_(OPEN_STATUSES))
        .order_by(AgentSessionRecord.created_at.desc())
    ).first()


def _get_session(session_id: str) -> AgentSessionRecord:
    """:raise ApiError 404: unknown id."""
    record = get_db().get(AgentSessionRecord, session_id) if len(session_id) <= 64 else None
    if record is None:
        raise ApiError(404, "not_found", f"no session with id {session_id!r}")
    return record


def _json_body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


@token_required("sessions:write")
def create_session() -> tuple[Response, int]:
    """Create a session, enqueue provisioning, return a participant token for the room.

    Idempotent per ``Idempotency-Key`` (each token has its own key space): a replay returns
    the same session (status 200) and a fresh token, and does not enqueue again. Without a
    key, a room that already has an open session gets that session back when the request
    asks for the same thing (200), else 409: one room never gets a second agent.
    New sessions count against the token's rate and daily quota (429).
    """
    try:
        req = CreateSessionRequest.model_validate(_json_body())
    except ValidationError as err:
        raise ApiError(
            422, "validation_error", "the request body is invalid", field_errors(err)
        ) from None
    settings = app_settings()
    spec = req.spec()
    problems = spec_violations(spec, settings)
    if problems:
        raise ApiError(
            422, "validation_error", "the session asks for more than this server allows", problems
        )
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > IDEMPOTENCY_KEY_MAX:
            raise ApiError(
                400,
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            )
        key = f"api:{g.api_token.id}:{key}"
    b = backend()
    db = get_db()
    with _room_guard(req.room if key is None else None):
        existed = key is not None and db.scalar(
            select(AgentSessionRecord.id).where(AgentSessionRecord.request_key == key)
        )
        record: AgentSessionRecord | None = None
        if not existed and key is None and req.room is not None:
            record = _open_session_in_room(req.room)
            if record is not None:
                wanted = spec.model_dump(mode="json", exclude={"session_id"})
                stored = {k: v for k, v in (record.spec or {}).items() if k != "session_id"}
                if stored != wanted:
                    raise ApiError(
                        409, "room_busy",
                        f"room {req.room!r} already has session {record.id} ({record.status}); "
                        "end it first, or retry with the same body or an Idempotency-Key",
                        {"room": "already has an open session"},
                    )
                existed = True
        if not existed:
            _check_session_quota()
        if record is None:
            record, created = b.create_session(
                db, settings, spec, room=req.room, source="api", request_key=key
            )
            db.commit()
            existed = existed or not created  # a concurrent request with this key won
        if not existed:
            provision_or_discard(db, settings, record, b.enqueue_provision)  # 503 if no broker
            logger.info("session requested", extra={"session_id": record.id, "room": record.room})
    identity = req.identity or f"caller-{secrets.token_hex(4)}"
    token = b.mint_token(
        settings, room=record.room, identity=identity, name=req.name,
        can_publish_data=bool((record.spec or {}).get("text_chat")),
    )
    reply = {
        "session": queries.session_dict(record),
        "room": record.room,
        "livekit_url": settings.livekit.browser_url,
        "identity": identity,
        "token": token,
        "links": {
            "self": url_for("api.get_session", session_id=record.id),
            "transcript": url_for("api.get_transcript", session_id=record.id),
        },
    }
    return jsonify(body(SessionCreated, reply)), 200 if existed else 201


@bp.get("/sessions/<session_id>")
@token_required("sessions:read")
def get_session(session_id: str) -> Response:
    record = _get_session(session_id)
    return jsonify(
        body(
            SessionDetail,
            {"session": queries.session_dict(record), "progress": queries.progress(record)},
        )
    )


@bp.get("/sessions/<session_id>/transcript")
@token_required("sessions:read")
def get_transcript(session_id: str) -> Response:
    """Live lines as they are written; `report` once post-processing has run."""
    record = _get_session(session_id)
    db = get_db()
    after = request.args.get("after", "0")
    if not after.isdigit():
        raise ApiError(400, "invalid_parameter", "after must be a line id", {"after": "not a number"})
    lines = queries.transcript_lines(db, record.id, after_id=int(after))
    report = queries.get_report(db, record.id)
    return jsonify(
        body(TranscriptView, {
            "session_id": record.id,
            "status": record.status,
            "lines": [queries.line_dict(line) for line in lines],
            "report": None
            if report is None
            else {"lines": report.lines, "stats": report.stats, "created_at": queries.iso(report.created_at)},
        })
    )


@bp.get("/sessions/<session_id>/summary")
@token_required("sessions:read")
def get_summary(session_id: str) -> Response:
    record = _get_session(session_id)
    summary = get_db().get(Summary, record.id)
    return jsonify(
        body(SummaryView, {
            "session_id": record.id,
            "status": record.status,
            "ready": summary is not None,
            "summary": queries.summary_dict(summary),
        })
    )


@bp.get("/sessions/<session_id>/usage")
@token_required("sessions:read")
def get_usage(session_id: str) -> Response:
    record = _get_session(session_id)
    settings = app_settings()
    usage = queries.usage_breakdown(get_db(), settings, record.id)
    return jsonify(
        body(UsageView, {"session_id": record.id, **usage.as_dict(settings.pricing.currency)})
    )


@bp.post("/sessions/<session_id>/end")
@token_required("sessions:write")
def end_session(session_id: str) -> tuple[Response, int]:
    """Ask LiveKit to close the room; the back office finalizes the session afterwards."""
    record = _get_session(session_id)
    if record.status in (SessionStatus.ENDED, SessionStatus.FAILED):
        raise ApiError(409, "not_running", f"the session is already {record.status}")
    backend().end_session(app_settings(), record)
    logger.info("session end requested", extra={"session_id": record.id})
    return jsonify(body(EndingView, {"session_id": record.id, "status": "ending"})), 202


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(build_openapi(app_settings()))


bp.add_url_rule("/sessions", "create_session", create_session, methods=["POST"])
alias_bp.add_url_rule("/sessions", "create_session", create_session, methods=["POST"])


def _api_error(err: ApiError) -> tuple[Response, int]:
    return err.response()


def _http_error(err: HTTPException) -> tuple[Response, int]:
    code = (err.name or "error").lower().replace(" ", "_")
    status = err.code or 500
    return ApiError(status, code, err.description or err.name).response()


for _blueprint in (bp, alias_bp):
    _blueprint.register_error_handler(ApiError, _api_error)
    _blueprint.register_error_handler(HTTPException, _http_error)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(alias_bp)
