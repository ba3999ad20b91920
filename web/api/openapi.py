"""The OpenAPI 3.1 description of `/api/v1`, built from the pydantic request model."""

from __future__ import annotations

from typing import Any

from config.settings import Settings

from .schemas import ErrorResponse, schema_for_openapi


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Session id returned by POST /sessions.",
}
AUTH_ERRORS = {
    "401": _error("Missing, invalid, expired or revoked bearer token."),
    "403": _error("The token lacks the scope (sessions:read or sessions:write)."),
    "404": _error("Unknown session."),
}


def build_openapi(settings: Settings) -> dict[str, Any]:
    request_schema = schema_for_openapi()
    defs = request_schema.pop("$defs", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(error_schema.pop("$defs", {}))
    session = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "room": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "provisioning", "dispatched", "active", "ended", "failed"],
            },
            "source": {"type": "string"},
            "providers": {"type": "object", "additionalProperties": {"type": "string"}},
            "error": {"type": ["string", "null"]},
            "end_reason": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
            "duration_seconds": {"type": ["number", "null"]},
            "is_open": {"type": "boolean"},
        },
    }
    created = {
        "type": "object",
        "properties": {
            "session": {"$ref": "#/components/schemas/Session"},
            "room": {"type": "string"},
            "livekit_url": {"type": "string", "description": "Connect the LiveKit client here."},
            "identity": {"type": "string"},
            "token": {"type": "string", "description": "Participant access token (JWT)."},
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["session", "room", "livekit_url", "identity", "token"],
    }
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
        "servers": [{"url": settings.web.base_url + "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/sessions": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Start an agent session and get a token to join its room",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 100},
                            "description": "Replaying a key returns the same session (200). "
                            "Each token has its own key space.",
                        }
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CreateSessionRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": _ok("Session created; provisioning runs in the background.", created),
                        "200": _ok(
                            "Replay of an earlier request with the same key, or the open "
                            "session of the requested room (same body, no key).",
                            created,
                        ),
                        "401": _error("Missing, invalid, expired or revoked bearer token."),
                        "403": _error("The token lacks the sessions:write scope."),
                        "409": _error("The room has an open session with another spec, or "
                                      "another request is starting one."),
                        "413": _error("Body over 1 MiB."),
                        "415": _error("Body is not JSON."),
                        "422": _error("Validation failed, or the spec asks for more than the "
                                      "operator allows; `fields` names each problem."),
                        "429": _error("Over the token's session rate or daily quota "
                                      "(see Retry-After)."),
                    },
                }
            },
            "/sessions/{session_id}": {
                "get": {
                    "operationId": "getSession",
                    "summary": "Status of a session",
                    "parameters": [SESSION_ID],
                    "responses": {
                        "200": _ok(
                            "The session and its provisioning progress.",
                            {
                                "type": "object",
                                "properties": {
                                    "session": {"$ref": "#/components/schemas/Session"},
                                    "progress": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        ),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/sessions/{session_id}/transcript": {
                "get": {
                    "operationId": "getTranscript",
                    "summary": "Transcript lines (live) and the post-processed report",
                    "parameters": [
                        SESSION_ID,
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                            "description": "Only lines with a larger id (for polling).",
                        },
                    ],
                    "responses": {"200": _ok("Transcript.", {"type": "object"}), **AUTH_ERRORS},
                }
            },
            "/sessions/{session_id}/summary": {
                "get": {
                    "operationId": "getSummary",
                    "summary": "Summary, once the session ended and was summarized",
                    "parameters": [SESSION_ID],
                    "responses": {"200": _ok("`ready` is false until then.", {"type": "object"}), **AUTH_ERRORS},
                }
            },
            "/sessions/{session_id}/usage": {
                "get": {
                    "operationId": "getUsage",
                    "summary": "Units used and cost per provider and metric",
                    "parameters": [SESSION_ID],
                    "responses": {
                        "200": _ok("`final` is false while costs are estimates.", {"type": "object"}),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/sessions/{session_id}/end": {
                "post": {
                    "operationId": "endSession",
                    "summary": "Close the room; the session is finalized in the background",
                    "parameters": [SESSION_ID],
                    "responses": {
                        "202": _ok("Ending.", {"type": "object"}),
                        "409": _error("The session already ended or failed."),
                        **AUTH_ERRORS,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "CreateSessionRequest": request_schema,
                "ErrorResponse": error_schema,
                "Session": session,
                **defs,
            },
        },
    }
