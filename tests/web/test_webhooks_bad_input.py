"""Bad webhooks change nothing: no session stored, no task enqueued (issue #12, "Bad input").

Through the web endpoint with the real verifier and a real broker, so "nothing enqueued" is
read from the queue itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from livekit import api
from sqlalchemy import func, select

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, WebhookEvent
from tests.tasks.helpers import room_event, signed_webhook

pytestmark = pytest.mark.unit

CT = "application/webhook+json"


@pytest.fixture
def wh(make_app: Callable[..., Flask], settings: Settings, valkey_url: str) -> Iterator[
    tuple[FlaskClient, Settings, redis.Redis]
]:
    s = settings.model_copy(update={
        "broker": settings.broker.model_copy(update={"url": valkey_url.rsplit("/", 1)[0] + "/7"}),
        "livekit": settings.livekit.model_copy(update={"webhook_rules_prefix": "agent-"}),
    })
    queue = redis.Redis.from_url(s.broker.effective_url)
    queue.flushdb()
    yield make_app(s, ratelimit_storage_uri="memory://").test_client(), s, queue
    queue.flushdb()
    queue.close()


def _nothing_happened(settings: Settings, queue: redis.Redis) -> None:
    with session_scope(settings.db.url) as db:
        assert db.scalar(select(func.count()).select_from(AgentSessionRecord)) == 0
        assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    assert queue.llen("live") == 0 and queue.llen("batch") == 0


def _sign(settings: Settings, body: str, ttl: timedelta | None = None) -> str:
    token = api.AccessToken(settings.livekit.api_key.get_secret_value(),
                            settings.livekit.api_secret.get_secret_value())
    if ttl is not None:
        token = token.with_ttl(ttl)
    token.claims.sha256 = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return token.to_jwt()


def test_bad_signature_and_tampered_body(wh: tuple[FlaskClient, Settings, redis.Redis]) -> None:
    client, s, queue = wh
    body, auth = signed_webhook(s, room_event("room_started", "agent-1"))
    _, forged = signed_webhook(s, room_event("room_started", "agent-1"), secret="x" * 40)
    for data, header in ((body, forged), (body.replace("agent-1", "agent-2"), auth),
                         (body, "not-a-jwt"), (body, "")):
        res = client.post("/webhooks/livekit", data=data, headers={"Authorization": header},
                          content_type=CT)
        assert res.status_code == 401 and res.json["error"]["code"] == "unauthorized"
    _nothing_happened(s, queue)


def test_expired_signature(wh: tuple[FlaskClient, Settings, redis.Redis]) -> None:
    client, s, queue = wh
    body, _ = signed_webhook(s, room_event("room_started", "agent-1"))
    auth = _sign(s, body, ttl=timedelta(minutes=-10))
    res = client.post("/webhooks/livekit", data=body, headers={"Authorization": auth},
                      content_type=CT)
    assert res.status_code == 401
    _nothing_happened(s, queue)


def test_replay_starts_nothing_twice(wh: tuple[FlaskClient, Settings, redis.Redis]) -> None:
    client, s, queue = wh
    body, auth = signed_webhook(s, room_event("room_started", "agent-9", event_id="EV_once"))
    codes = [client.post("/webhooks/livekit", data=body, headers={"Authorization": auth},
                         content_type=CT) for _ in range(3)]
    assert [r.json["action"] for r in codes] == ["session_created", "duplicate", "duplicate"]
    with session_scope(s.db.url) as db:
        assert db.scalar(select(func.count()).select_from(AgentSessionRecord)) == 1
    assert queue.llen("live") == 1


def test_malformed_json_is_400(wh: tuple[FlaskClient, Settings, redis.Redis]) -> None:
    client, s, queue = wh
    for body in ("{not json", "[1, 2]", json.dumps({"event": 5})):
        res = client.post("/webhooks/livekit", data=body,
                          headers={"Authorization": _sign(s, body)}, content_type=CT)
        assert res.status_code == 400, body
        assert res.json["error"]["code"] == "invalid_event"
    _nothing_happened(s, queue)


def test_oversized_body_is_json_413(wh: tuple[FlaskClient, Settings, redis.Redis]) -> None:
    client, s, queue = wh
    body = json.dumps({"event": "room_started", "room": {"name": "agent-x", "metadata": "x" * (1 << 20)}})
    res = client.post("/webhooks/livekit", data=body, headers={"Authorization": _sign(s, body)},
                      content_type=CT)
    assert res.status_code == 413
    assert res.is_json and res.json["error"]["code"] == "payload_too_large"
    _nothing_happened(s, queue)
