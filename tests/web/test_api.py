"""JSON API: bearer auth, validation, idempotency, reads, end, OpenAPI description."""

from __future__ import annotations

import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, ApiToken, SessionStatus

from .conftest import Calls, add_costs, add_session, add_summary_and_report

pytestmark = pytest.mark.unit


def _count(url: str) -> int:
    with session_scope(url) as db:
        return int(db.scalar(select(func.count()).select_from(AgentSessionRecord)) or 0)


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer ", "Basic abc", "Bearer ava_not-a-real-token", "Token ava_x"],
)
def test_api_requires_a_valid_token(client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    res = client.post("/api/v1/sessions", json={}, headers=headers)
    assert res.status_code == 401
    assert res.json["error"]["code"] == "unauthorized"
    assert set(res.json["error"]) == {"code", "message", "fields"}


def test_revoked_token_is_rejected(client: FlaskClient, bearer: dict[str, str], settings: Settings) -> None:
    with session_scope(settings.db.url) as db:
        for row in db.scalars(select(ApiToken)):
            row.revoked = True
    assert client.get("/api/v1/sessions/x", headers=bearer).status_code == 401


def test_create_session(client: FlaskClient, bearer: dict[str, str], calls: Calls, settings: Settings) -> None:
    body = {"room": "api-room", "identity": "alice", "name": "Alice", "greeting": "Hey!",
            "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "avatar": {"provider": "none"}}
    res = client.post("/api/v1/sessions", json=body, headers=bearer)
    assert res.status_code == 201, res.json
    data = res.json
    sid = data["session"]["id"]
    assert data["room"] == "api-room"
    assert data["livekit_url"] == settings.livekit.browser_url
    assert data["identity"] == "alice"
    assert data["session"]["status"] == "pending"
    assert data["session"]["providers"]["llm"] == "openai"
    assert data["session"]["providers"]["avatar"] == "none"
    claims = jwt.decode(data["token"], settings.livekit.api_secret.get_secret_value(),
                        algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "alice"
    assert claims["video"]["room"] == "api-room" and claims["video"]["roomJoin"] is True
    # enqueued exactly once, after the row was committed (seen from another connection)
    assert calls.enqueued == [(sid, "pending")]
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None and rec.source == "api"
        assert rec.spec["greeting"] == "Hey!" and rec.spec["session_id"] == sid


def test_create_with_empty_body_uses_defaults(client: FlaskClient, bearer: dict[str, str], calls: Calls) -> None:
    res = client.post("/api/v1/sessions", headers=bearer)
    assert res.status_code == 201
    assert res.json["room"].startswith("avatar-")
    assert res.json["identity"].startswith("caller-")
    assert len(calls.enqueued) == 1


def test_alias_route(client: FlaskClient, bearer: dict[str, str], calls: Calls) -> None:
    res = client.post("/api/sessions", json={"room": "alias-room"}, headers=bearer)
    assert res.status_code == 201
    assert res.json["room"] == "alias-room"


def test_idempotency_key(client: FlaskClient, bearer: dict[str, str], calls: Calls, settings: Settings) -> None:
    headers = {**bearer, "Idempotency-Key": "order-42"}
    first = client.post("/api/v1/sessions", json={"room": "r1"}, headers=headers)
    again = client.post("/api/v1/sessions", json={"room": "r1"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json["session"]["id"] == again.json["session"]["id"]
    assert len(calls.enqueued) == 1
    assert _count(settings.db.url) == 1
    other = client.post("/api/v1/sessions", json={"room": "r1"}, headers={**bearer, "Idempotency-Key": "order-43"})
    assert other.status_code == 201 and other.json["session"]["id"] != first.json["session"]["id"]
    too_long = client.post("/api/v1/sessions", json={}, headers={**bearer, "Idempotency-Key": "k" * 101})
    assert too_long.status_code == 400
    assert too_long.json["error"]["code"] == "invalid_idempotency_key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"room": "bad room!"}, "room"),
        ({"room": ""}, "room"),
        ({"identity": "a/b"}, "identity"),
        ({"llm": {"temperature": 9}}, "llm.temperature"),
        ({"tts": {"provider": "acme"}}, "tts.provider"),
        ({"instructions": ""}, "instructions"),
        ({"greeting": "x" * 501}, "greeting"),
        ({"colour": "blue"}, "colour"),
        ({"session_id": "abc"}, "body"),
        ({"max_session_minutes": -1}, "max_session_minutes"),
    ],
)
def test_validation_errors(
    client: FlaskClient, bearer: dict[str, str], calls: Calls, settings: Settings, body: dict, field: str  # type: ignore[type-arg]
) -> None:
    res = client.post("/api/v1/sessions", json=body, headers=bearer)
    assert res.status_code == 422, res.json
    err = res.json["error"]
    assert err["code"] == "validation_error"
    assert field in err["fields"], err
    assert err["fields"][field]
    assert calls.enqueued == [] and _count(settings.db.url) == 0


def test_body_must_be_a_json_object(client: FlaskClient, bearer: dict[str, str]) -> None:
    res = client.post("/api/v1/sessions", data="room=x", headers=bearer,
                      content_type="application/x-www-form-urlencoded")
    assert res.status_code == 415
    res = client.post("/api/v1/sessions", data="[1, 2]", headers=bearer, content_type="application/json")
    assert res.status_code == 400 and res.json["error"]["code"] == "invalid_json"
    res = client.post("/api/v1/sessions", data="{nope", headers=bearer, content_type="application/json")
    assert res.status_code == 400


@pytest.mark.parametrize("suffix", ["", "/transcript", "/summary", "/usage"])
def test_unknown_session_is_404(client: FlaskClient, bearer: dict[str, str], suffix: str) -> None:
    res = client.get(f"/api/v1/sessions/does-not-exist{suffix}", headers=bearer)
    assert res.status_code == 404
    assert res.json["error"]["code"] == "not_found"
    assert client.post("/api/v1/sessions/does-not-exist/end", headers=bearer).status_code == 404


def test_reads(client: FlaskClient, bearer: dict[str, str], settings: Settings) -> None:
    url = settings.db.url
    sid = add_session(url, status=SessionStatus.ENDED,
                      lines=[("user", "Hi <b>there</b>"), ("agent", "Hello!")])
    res = client.get(f"/api/v1/sessions/{sid}", headers=bearer)
    assert res.status_code == 200
    assert res.json["session"]["status"] == "ended"
    assert [s["state"] for s in res.json["progress"]] == ["done"] * 5

    tr = client.get(f"/api/v1/sessions/{sid}/transcript", headers=bearer).json
    assert [line["text"] for line in tr["lines"]] == ["Hi <b>there</b>", "Hello!"]
    assert tr["report"] is None
    after = tr["lines"][0]["id"]
    tr2 = client.get(f"/api/v1/sessions/{sid}/transcript?after={after}", headers=bearer).json
    assert [line["text"] for line in tr2["lines"]] == ["Hello!"]
    assert client.get(f"/api/v1/sessions/{sid}/transcript?after=x", headers=bearer).status_code == 400

    summary = client.get(f"/api/v1/sessions/{sid}/summary", headers=bearer).json
    assert summary["ready"] is False and summary["summary"] is None
    add_summary_and_report(url, sid)
    summary = client.get(f"/api/v1/sessions/{sid}/summary", headers=bearer).json
    assert summary["ready"] is True
    assert summary["summary"]["key_points"] == ["Opening hours", "Weekend service"]
    assert client.get(f"/api/v1/sessions/{sid}/transcript", headers=bearer).json["report"]["stats"] == {"turns": 2}


def test_usage_estimate_then_final(client: FlaskClient, bearer: dict[str, str], settings: Settings) -> None:
    from store.models import UsageRecord

    url = settings.db.url
    sid = add_session(url, status=SessionStatus.ENDED)
    with session_scope(url) as db:
        db.add(UsageRecord(session_id=sid, provider="openai", metric="llm_output_tokens", quantity=1_000_000))
    usage = client.get(f"/api/v1/sessions/{sid}/usage", headers=bearer).json
    assert usage["final"] is False
    assert usage["total_cost"] == pytest.approx(0.60)
    other = add_session(url, room="other", status=SessionStatus.ENDED)
    add_costs(url, other, __import__("datetime").date.today(), {("tavus", "avatar_seconds"): (60, 0.32 / 60)})
    usage = client.get(f"/api/v1/sessions/{other}/usage", headers=bearer).json
    assert usage["final"] is True
    assert usage["total_cost"] == pytest.approx(0.32)
    assert usage["items"][0]["provider"] == "tavus"


def test_end_session(client: FlaskClient, bearer: dict[str, str], calls: Calls, settings: Settings) -> None:
    sid = add_session(settings.db.url, status=SessionStatus.ACTIVE)
    res = client.post(f"/api/v1/sessions/{sid}/end", headers=bearer)
    assert res.status_code == 202 and res.json["status"] == "ending"
    assert calls.ended == [sid]
    done = add_session(settings.db.url, room="done", status=SessionStatus.ENDED)
    res = client.post(f"/api/v1/sessions/{done}/end", headers=bearer)
    assert res.status_code == 409 and res.json["error"]["code"] == "not_running"
    assert calls.ended == [sid]


def test_api_needs_no_csrf_but_wrong_method_is_json(client: FlaskClient, bearer: dict[str, str]) -> None:
    res = client.delete("/api/v1/sessions", headers=bearer)
    assert res.status_code == 405
    assert res.json["error"]["code"] == "method_not_allowed"


def test_openapi_description(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/sessions", "/sessions/{session_id}", "/sessions/{session_id}/transcript",
            "/sessions/{session_id}/summary", "/sessions/{session_id}/usage",
            "/sessions/{session_id}/end"} <= set(doc["paths"])
    req = doc["components"]["schemas"]["CreateSessionRequest"]
    assert {"room", "identity", "instructions", "greeting", "llm", "avatar"} <= set(req["properties"])
    assert "session_id" not in req["properties"]
    # every $ref resolves
    import json
    import re

    text = json.dumps(doc)
    for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref
