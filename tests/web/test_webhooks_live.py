"""The real livekit-server sends its webhooks to the web process, which starts sessions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from livekit import api
from sqlalchemy import select
from werkzeug.serving import make_server

from cli.services import LiveKitServerConfig, start_livekit_server, stop_process
from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import AgentSessionRecord, WebhookEvent
from tests.conftest import TEST_API_KEY, TEST_API_SECRET, free_port, require_netns
from tests.waiting import wait_for
from web import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def hooked(tmp_path: Path, valkey_url: str, db_url: str) -> Iterator[Settings]:
    """A livekit-server whose webhooks go to a served `create_app()`."""
    require_netns()
    web_port = free_port()
    lk_cfg = LiveKitServerConfig.on_free_ports(
        api_key=TEST_API_KEY, api_secret=TEST_API_SECRET,
        webhook_urls=[f"http://127.0.0.1:{web_port}/webhooks/livekit"],
    )
    settings = load_settings(
        livekit={"url": f"ws://127.0.0.1:{lk_cfg.port}", "api_key": TEST_API_KEY,
                 "api_secret": TEST_API_SECRET, "webhook_rules_prefix": "support-"},
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/3"},
        db={"url": db_url},
        var_dir=tmp_path,
        _env_file=None,
    )
    redis.Redis.from_url(settings.broker.effective_url).flushdb()
    server = make_server("127.0.0.1", web_port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    lk = start_livekit_server(lk_cfg, log_path=tmp_path / "livekit.log")
    try:
        yield settings
    finally:
        stop_process(lk)
        server.shutdown()


def _sessions(settings: Settings, room: str) -> list[AgentSessionRecord]:
    with session_scope(settings.db.url) as db:
        return list(db.scalars(select(AgentSessionRecord).where(AgentSessionRecord.room == room)))


def _seen(settings: Settings, event: str, room: str) -> bool:
    with session_scope(settings.db.url) as db:
        return db.scalar(select(WebhookEvent.id).where(
            WebhookEvent.event == event, WebhookEvent.room == room)) is not None


async def test_room_started_webhook_provisions_matching_rooms_only(hooked: Settings) -> None:
    settings = hooked
    async with api.LiveKitAPI(settings.livekit.http_url, TEST_API_KEY, TEST_API_SECRET) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name="other-1", empty_timeout=60))
        await lk.room.create_room(api.CreateRoomRequest(name="support-1", empty_timeout=60))
    wait_for(lambda: _sessions(settings, "support-1"), 30, "a session for support-1")
    [rec] = _sessions(settings, "support-1")
    assert rec.source == "webhook"
    broker = redis.Redis.from_url(settings.broker.effective_url)
    wait_for(lambda: broker.llen("live") > 0, 30, "provisioning to be enqueued")
    assert broker.llen("live") == 1  # once, after the commit
    wait_for(lambda: _seen(settings, "room_started", "other-1"), 30, "the other room's webhook")
    assert _sessions(settings, "other-1") == []  # no rule matches: no agent

    async with api.LiveKitAPI(settings.livekit.http_url, TEST_API_KEY, TEST_API_SECRET) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room="support-1"))
    wait_for(lambda: _sessions(settings, "support-1")[0].status == "ended", 30, "room_finished")
