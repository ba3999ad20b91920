"""The OpenAPI description says what the API does: every route, every response it gives.

Each documented operation is called through the Flask test client on a real (SQLite or
PostgreSQL) store, and each response is validated against the schema the description gives
for that operation and status code, so a field the API returns but the description lacks
(or the reverse) fails here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from werkzeug.test import TestResponse

from config.settings import Settings
from store.models import SessionStatus
from web.api.openapi import OPERATIONS, PREFIX

from .conftest import Calls, add_costs, add_session, add_summary_and_report

pytestmark = pytest.mark.unit


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Described:
    """The served description, and a check of one response against it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.checked: set[tuple[str, str, str]] = set()

    def check(self, method: str, path: str, res: TestResponse) -> dict[str, Any]:
        op = self.doc["paths"][path][method]
        status = str(res.status_code)
        assert status in op["responses"], (
            f"{method.upper()} {path} answered {status}, which the description does not list"
        )
        pointer = _pointer("paths", path, method, "responses", status, "content",
                           "application/json", "schema")
        Draft202012Validator({**self.doc, "$ref": pointer}).validate(res.json)
        self.checked.add((method, path, status))
        return res.json  # type: ignore[no-any-return]


@pytest.fixture
def described(client: FlaskClient) -> Described:
    res = client.get(f"{PREFIX}/openapi.json")
    assert res.status_code == 200
    Draft202012Validator.check_schema({"$defs": res.json["components"]["schemas"]})
    return Described(res.json)


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_every_api_route_is_described_and_nothing_else(app: Flask, described: Described) -> None:
    served = {
        (method.lower(), _flask_path(rule.rule).removeprefix(PREFIX), rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(PREFIX + "/") and rule.endpoint != "api.openapi"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    table = {(op.method, op.path, op.endpoint) for op in OPERATIONS}
    assert served == table
    assert {(m, p) for p, ops in described.doc["paths"].items() for m in ops} == {
        (m, p) for m, p, _ in table
    }


def test_every_response_matches_its_description(
    client: FlaskClient, bearer: dict[str, str], described: Described, settings: Settings,
    calls: Calls,
) -> None:
    url = settings.db.url
    # create: new (201), replay of the key (200), and the errors a client meets first
    created = client.post(f"{PREFIX}/sessions", json={"room": "doc-room", "greeting": "Hi"},
                          headers={**bearer, "Idempotency-Key": "doc-1"})
    assert created.status_code == 201
    sid = described.check("post", "/sessions", created)["session"]["id"]
    replay = client.post(f"{PREFIX}/sessions", json={"room": "doc-room", "greeting": "Hi"},
                         headers={**bearer, "Idempotency-Key": "doc-1"})
    assert replay.status_code == 200
    described.check("post", "/sessions", replay)
    for res, status in (
        (client.post(f"{PREFIX}/sessions", json={}), 401),
        (client.post(f"{PREFIX}/sessions", json={"llm": {"temperature": 9}}, headers=bearer), 422),
        (client.post(f"{PREFIX}/sessions", data="x", content_type="text/plain", headers=bearer), 415),
        (client.post(f"{PREFIX}/sessions", json=[1], headers=bearer), 400),
        (client.post(f"{PREFIX}/sessions", json={"room": "doc-room", "greeting": "Other"},
                     headers=bearer), 409),
    ):
        assert res.status_code == status, res.json
        described.check("post", "/sessions", res)

    # a provisioned, finished session with a transcript, report, summary and costs
    done = add_session(url, room="doc-done", status=SessionStatus.ENDED,
                       lines=[("agent", "Hello!"), ("user", "Hi, are you open today?")],
                       provisioned_at=datetime.now(UTC))
    add_summary_and_report(url, done)
    add_costs(url, done, datetime.now(UTC).date(), {("openai", "llm_input_tokens"): (1200, 1e-7)})

    for sid_ in (sid, done, "no-such-session"):
        for op in OPERATIONS:
            if op.method != "get":
                continue
            path = op.path.replace("{session_id}", sid_)
            res = client.get(PREFIX + path, headers=bearer)
            body = described.check("get", op.path, res)
            if sid_ == done and op.endpoint == "api.get_session":
                assert body["session"]["provisioned_at"] is not None
    described.check("get", "/sessions/{session_id}/transcript",
                    client.get(f"{PREFIX}/sessions/{done}/transcript?after=x", headers=bearer))
    described.check("get", "/sessions/{session_id}", client.get(f"{PREFIX}/sessions/{sid}"))

    ending = client.post(f"{PREFIX}/sessions/{sid}/end", headers=bearer)
    assert ending.status_code == 202 and calls.ended == [sid]
    described.check("post", "/sessions/{session_id}/end", ending)
    described.check("post", "/sessions/{session_id}/end",
                    client.post(f"{PREFIX}/sessions/{done}/end", headers=bearer))  # 409

    # every success status the description promises was seen and matched
    promised = {(op.method, op.path, str(code)) for op in OPERATIONS for code in op.responses}
    assert promised <= described.checked, promised - described.checked


def test_a_field_missing_from_the_description_fails(
    client: FlaskClient, bearer: dict[str, str], described: Described, settings: Settings
) -> None:
    """What the check above catches: the drift that once left out ``provisioned_at``."""
    sid = add_session(settings.db.url, provisioned_at=datetime.now(UTC))
    res = client.get(f"{PREFIX}/sessions/{sid}", headers=bearer)
    described.check("get", "/sessions/{session_id}", res)
    session_schema = described.doc["components"]["schemas"]["SessionView"]
    del session_schema["properties"]["provisioned_at"]
    session_schema["required"].remove("provisioned_at")
    with pytest.raises(ValidationError, match="provisioned_at"):
        described.check("get", "/sessions/{session_id}", res)


def test_request_schema_is_the_validated_model(described: Described) -> None:
    req = described.doc["components"]["schemas"]["CreateSessionRequest"]
    assert {"room", "identity", "instructions", "greeting", "llm", "avatar"} <= set(req["properties"])
    assert "session_id" not in req["properties"]  # set by the server
    assert req.get("additionalProperties") is False  # unknown fields are rejected (422)
