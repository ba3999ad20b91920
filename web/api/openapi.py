"""The OpenAPI 3.1 description of `/api/v1`, generated from the API's own pydantic models.

The request body is ``CreateSessionRequest``, which ``create_session`` validates with; every
response body is one of the models in ``schemas`` through which the views build it (see
``schemas.body``), so the description cannot drift from what the API returns. What pydantic
cannot know about a route (path, method, summary, the errors it may answer) is the small
table ``OPERATIONS``; ``tests/web/test_openapi.py`` checks it against the Flask URL map and
every response of every operation against the generated schemas.

Why no framework: the Flask libraries that generate OpenAPI from pydantic (spectree,
flask-openapi3) also take over request parsing and error bodies (415 for a non-JSON body,
defaults for an empty one, our ``{"error": {"code", "message", "fields"}}``), bind one
document to one app while the factory builds many, or replace the Flask app class; and
their documentation pages load scripts from a CDN. Fifty lines here keep the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from config.settings import Settings

from .schemas import (
    CreateSessionRequest,
    EndingView,
    ErrorResponse,
    SessionCreated,
    SessionDetail,
    SummaryView,
    TranscriptView,
    UsageView,
)

REF = "#/components/schemas/{model}"
PREFIX = "/api/v1"

SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Session id returned by POST /sessions.",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 100},
    "description": "Replaying a key returns the same session (200). "
    "Each token has its own key space.",
}
AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Only lines with a larger id (for polling).",
}
READ_ERRORS = {
    401: "Missing, invalid, expired or revoked bearer token.",
    403: "The token lacks the sessions:read scope.",
    404: "Unknown session.",
    503: "A dependency (database, broker) is down; retry after Retry-After.",
}
WRITE_ERRORS = {**READ_ERRORS, 403: "The token lacks the sessions:write scope."}


@dataclass(frozen=True)
class Operation:
    """One documented route: what the Flask view is and what it may answer."""

    method: str
    path: str  # OpenAPI form, under PREFIX
    endpoint: str  # Flask endpoint of the view
    operation_id: str
    summary: str
    responses: dict[int, tuple[type[BaseModel], str]]
    errors: dict[int, str]
    parameters: tuple[dict[str, Any], ...] = ()
    request: type[BaseModel] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/sessions", "api.create_session", "createSession",
        "Start an agent session and get a token to join its room",
        responses={
            201: (SessionCreated, "Session created; provisioning runs in the background."),
            200: (SessionCreated, "Replay of an earlier request with the same key, or the open "
                  "session of the requested room (same body, no key)."),
        },
        errors={
            400: "Body is not a JSON object, or a bad Idempotency-Key.",
            401: READ_ERRORS[401],
            403: WRITE_ERRORS[403],
            409: "The room has an open session with another spec, or another request is "
                 "starting one.",
            413: "Body over 1 MiB.",
            415: "Body is not JSON.",
            422: "Validation failed, or the spec asks for more than the operator allows; "
                 "`fields` names each problem.",
            429: "Over the token's session rate or daily quota (see Retry-After).",
            503: READ_ERRORS[503],
        },
        parameters=(IDEMPOTENCY_KEY,),
        request=CreateSessionRequest,
    ),
    Operation(
        "get", "/sessions/{session_id}", "api.get_session", "getSession", "Status of a session",
        responses={200: (SessionDetail, "The session and its provisioning progress.")},
        errors=READ_ERRORS, parameters=(SESSION_ID,),
    ),
    Operation(
        "get", "/sessions/{session_id}/transcript", "api.get_transcript", "getTranscript",
        "Transcript lines (live) and the post-processed report",
        responses={200: (TranscriptView, "Transcript.")},
        errors={**READ_ERRORS, 400: "`after` is not a line id."},
        parameters=(SESSION_ID, AFTER),
    ),
    Operation(
        "get", "/sessions/{session_id}/summary", "api.get_summary", "getSummary",
        "Summary, once the session ended and was summarized",
        responses={200: (SummaryView, "`ready` is false until then.")},
        errors=READ_ERRORS, parameters=(SESSION_ID,),
    ),
    Operation(
        "get", "/sessions/{session_id}/usage", "api.get_usage", "getUsage",
        "Units used and cost per provider and metric",
        responses={200: (UsageView, "`final` is false while costs are estimates.")},
        errors=READ_ERRORS, parameters=(SESSION_ID,),
    ),
    Operation(
        "post", "/sessions/{session_id}/end", "api.end_session", "endSession",
        "Close the room; the session is finalized in the background",
        responses={202: (EndingView, "Ending.")},
        errors={**WRITE_ERRORS, 409: "The session already ended or failed."},
        parameters=(SESSION_ID,),
    ),
)


def _schemas() -> dict[str, Any]:
    """Every model's JSON schema, nested models lifted into ``components/schemas``."""
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    for op in OPERATIONS:
        if op.request is not None:
            models.append((op.request, "validation"))
        models += [(model, "serialization") for model, _ in op.responses.values()]
    _, top = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    # set by the server: accepted by the shared spec model, never by the API
    defs["CreateSessionRequest"].get("properties", {}).pop("session_id", None)
    return defs


def _content(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }


def _operation(op: Operation) -> dict[str, Any]:
    responses = {str(code): _content(model, text) for code, (model, text) in op.responses.items()}
    responses |= {str(code): _content(ErrorResponse, text) for code, text in op.errors.items()}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "parameters": list(op.parameters),
        "responses": dict(sorted(responses.items())),
    }
    if op.request is not None:
        out["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=op.request.__name__)}}},
        }
    return out


def build_openapi(settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Avatar agent service API",
            "version": "1",
            "description": "Put a talking-face AI agent into a LiveKit room and read what "
            "happened. Authenticate with `Authorization: Bearer <token>` "
            "(`avatar token create NAME`). Errors are `{\"error\": {\"code\", \"message\", "
            "\"fields\"}}`.",
        },
        "servers": [{"url": settings.web.base_url + PREFIX}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }
