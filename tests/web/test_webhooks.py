"""`POST /webhooks/livekit` with the real verifier from `tasks.webhooks`."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from flask.testing import FlaskClient
from livekit import api

from config.settings import Settings

pytestmark = pytest.mark.unit


def _signed(settings: Settings, body: str, *, secret: str | None = None) -> str:
    token = api.AccessToken(
        settings.livekit.api_key.get_secret_value(),
        secret or settings.livekit.api_secret.get_secret_value(),
    )
    token.claims.sha256 = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return token.to_jwt()


BODY = json.dumps({"event": "participant_left", "id": "EV_1", "room": {"name": "r", "sid": "RM_1"}})


def test_missing_signature_is_401(client: FlaskClient) -> None:
    res = client.post("/webhooks/livekit", data=BODY, content_type="application/webhook+json")
    assert res.status_code == 401
    assert res.json["error"]["code"] == "unauthorized"


def test_bad_signature_is_401(client: FlaskClient, settings: Settings) -> None:
    auth = _signed(settings, BODY, secret="another-secret-0123456789abcdef0123456789")
    res = client.post("/webhooks/livekit", data=BODY, headers={"Authorization": auth},
                      content_type="application/webhook+json")
    assert res.status_code == 401
    tampered = _signed(settings, BODY)
    res = client.post("/webhooks/livekit", data=BODY.replace("RM_1", "RM_2"),
                      headers={"Authorization": tampered}, content_type="application/webhook+json")
    assert res.status_code == 401


def test_valid_event_is_accepted_without_csrf(client: FlaskClient, settings: Settings) -> None:
    res = client.post("/webhooks/livekit", data=BODY, headers={"Authorization": _signed(settings, BODY)},
                      content_type="application/webhook+json")
    assert res.status_code == 200, res.json
    assert res.json["ok"] is True and res.json["action"] == "ignored"
    again = client.post("/webhooks/livekit", data=BODY, headers={"Authorization": _signed(settings, BODY)},
                        content_type="application/webhook+json")
    assert again.json["action"] == "duplicate"
