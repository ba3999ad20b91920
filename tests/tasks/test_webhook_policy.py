"""Room metadata is not the operator's: a webhook-started room picks only what they allow."""

from __future__ import annotations

import json

import pytest
import redis

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import AgentSessionRecord
from tasks.app import make_celery
from tasks.webhooks import handle_livekit_webhook
from tests.tasks.helpers import room_event, signed_webhook

pytestmark = pytest.mark.unit


@pytest.fixture
def wh_settings(settings: Settings, valkey_url: str) -> Settings:
    return load_settings(
        db={"url": settings.db.url},
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/6"},
        livekit={"api_key": "testkey", "api_secret": "test-secret-0123456789abcdef0123456789ab"},
        limits={"max_session_minutes": 30},
        _env_file=None,
    )


@pytest.mark.parametrize(
    "wanted",
    [
        {"llm": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        {"llm": {"provider": "openai", "endpoint": "not-configured"}},
        {"max_session_minutes": 600},
        {"avatar": {"provider": "local", "avatar_id": "nobody"}},
    ],
)
def test_room_metadata_beyond_the_operator_starts_nothing(
    wh_settings: Settings, wanted: dict  # type: ignore[type-arg]
) -> None:
    queue = redis.Redis.from_url(wh_settings.broker.effective_url)
    queue.flushdb()
    try:
        event = room_event("room_started", "meta-room", metadata=json.dumps({"avatar_agent": wanted}))
        body, auth = signed_webhook(wh_settings, event)
        app = make_celery(wh_settings, set_as_current=False)
        out = handle_livekit_webhook(wh_settings, body, auth, app=app).as_dict()
        assert out["action"] == "ignored"
        with session_scope(wh_settings.db.url) as db:
            assert db.query(AgentSessionRecord).count() == 0
        assert queue.llen("live") == 0
    finally:
        queue.flushdb()
        queue.close()
