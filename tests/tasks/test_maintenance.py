"""Beat jobs: reconcile sessions against the real LiveKit server, purge old transcripts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis
from livekit import api
from sqlalchemy import select

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import SessionStatus, TranscriptLine, utcnow
from tasks.app import make_celery
from tasks.maintenance import purge_transcripts, reconcile
from tests.tasks.conftest import WebhookLiveKit
from tests.tasks.helpers import get_session, livekit_client, new_session, unique
from tests.tasks.test_webhooks import queued_tasks


@pytest.mark.unit
def test_purge_deletes_only_lines_past_retention(settings: Settings) -> None:
    sid = new_session(settings)
    old = utcnow() - timedelta(days=settings.limits.transcript_retention_days + 1)
    with session_scope(settings.db.url) as db:
        db.add(TranscriptLine(session_id=sid, item_id="old", speaker="user", text="a",
                              created_at=old))
        db.add(TranscriptLine(session_id=sid, item_id="new", speaker="user", text="b"))
    assert purge_transcripts(settings) == 1
    assert purge_transcripts(settings) == 0  # running twice deletes nothing more
    with session_scope(settings.db.url) as db:
        assert db.scalars(select(TranscriptLine.item_id)).all() == ["new"]


@pytest.mark.integration
async def test_reconcile_closes_sessions_whose_room_is_gone(
    webhook_livekit: WebhookLiveKit, settings: Settings, valkey_url: str
) -> None:
    own = load_settings(
        db={"url": settings.db.url},  # a fresh database: only this test's sessions
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/6"},
        livekit={"url": webhook_livekit.url, "api_key": webhook_livekit.api_key,
                 "api_secret": webhook_livekit.api_secret},
        _env_file=None,
    )
    client = redis.Redis.from_url(own.broker.effective_url)
    client.flushdb()
    app = make_celery(own, set_as_current=False)
    long_ago = utcnow() - timedelta(minutes=5)
    alive_room, gone_room = unique("avatar-alive-"), unique("avatar-gone-")
    async with livekit_client(own) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=alive_room, empty_timeout=300))
    alive = new_session(own, room=alive_room, status="active", created_at=long_ago)
    gone = new_session(own, room=gone_room, status="dispatched", created_at=long_ago)
    young = new_session(own, room=unique("avatar-young-"), status="dispatched")
    stale = new_session(own, status="pending", created_at=long_ago)
    try:
        counts = await asyncio.to_thread(reconcile, own, app)
        again = await asyncio.to_thread(reconcile, own, app)
    finally:
        async with livekit_client(own) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=alive_room))

    assert get_session(own, gone).status == SessionStatus.ENDED
    assert get_session(own, gone).end_reason == "room_gone"
    assert get_session(own, alive).status == SessionStatus.ACTIVE
    assert get_session(own, young).status == SessionStatus.DISPATCHED  # within the grace time
    assert counts["closed"] == 1 and again["closed"] == 0
    batch = queued_tasks(client, "batch")
    assert batch == [("tasks.maintenance.finalize_session", [gone])]
    live = queued_tasks(client, "live")
    assert ("tasks.provisioning.provision_session", [stale]) in live
    client.flushdb()
    client.close()


@pytest.mark.unit
def test_retention_also_purges_exports_summaries_and_webhook_events(settings: Settings) -> None:
    from store.models import Summary, TranscriptReport, WebhookEvent
    from tasks.maintenance import WEBHOOK_EVENT_RETENTION, purge_expired

    old_sid, new_sid = new_session(settings), new_session(settings)
    old = utcnow() - timedelta(days=settings.limits.transcript_retention_days + 1)
    with session_scope(settings.db.url) as db:
        for sid, when in ((old_sid, old), (new_sid, utcnow())):
            db.add(TranscriptReport(session_id=sid, export_markdown="caller said x", created_at=when))
            db.add(Summary(session_id=sid, model="m", summary="about x", sentiment="neutral",
                           created_at=when))
        db.add(WebhookEvent(id="old-ev", event="room_started",
                            received_at=utcnow() - WEBHOOK_EVENT_RETENTION - timedelta(hours=1)))
        db.add(WebhookEvent(id="new-ev", event="room_started"))
    assert purge_expired(settings) == {"lines": 0, "reports": 1, "summaries": 1, "webhook_events": 1}
    assert purge_expired(settings) == {"lines": 0, "reports": 0, "summaries": 0, "webhook_events": 0}
    with session_scope(settings.db.url) as db:
        assert db.scalars(select(TranscriptReport.session_id)).all() == [new_sid]
        assert db.scalars(select(Summary.session_id)).all() == [new_sid]
        assert db.scalars(select(WebhookEvent.id)).all() == ["new-ev"]
        assert get_session(settings, old_sid) is not None  # the session and its billing stay
