"""LiveKit webhooks: signature, de-duplication, rules, and the real server end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from livekit import api, rtc
from sqlalchemy import select

from config.session import SessionSpec
from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import (
    AgentSessionRecord,
    SessionCost,
    SessionStatus,
    TranscriptReport,
    WebhookEvent,
)
from tasks.app import AvatarCelery, make_celery
from tasks.provisioning import mint_participant_token
from tasks.webhooks import (
    WebhookPayloadError,
    WebhookSignatureError,
    handle_livekit_webhook,
    spec_from_room_metadata,
)
from tests.tasks.conftest import WebhookLiveKit, WebhookReceiver, WorkerProcess, wait_for
from tests.tasks.helpers import (
    get_session,
    livekit_client,
    new_session,
    room_event,
    session_when,
    signed_webhook,
    unique,
)

# --------------------------------------------------------------------------- unit level


@pytest.fixture
def wh_settings(settings: Settings, valkey_url: str) -> Settings:
    """Fresh database; a broker database of its own, which no worker consumes."""
    return load_settings(
        db={"url": settings.db.url},
        broker={"url": valkey_url.rsplit("/", 1)[0] + "/5"},
        livekit={"api_key": "testkey", "api_secret": "test-secret-0123456789abcdef0123456789ab",
                 "webhook_rules_prefix": "agent-"},
        _env_file=None,
    )


@pytest.fixture
def queued(wh_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(wh_settings.broker.effective_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def wh_app(wh_settings: Settings) -> AvatarCelery:
    return make_celery(wh_settings, set_as_current=False)


def queued_tasks(client: redis.Redis, queue: str) -> list[tuple[str, list[str]]]:
    out = []
    for raw in client.lrange(queue, 0, -1):
        msg = json.loads(raw)
        out.append((msg["headers"]["task"], json.loads(__import__("base64").b64decode(
            msg["body"]))[0]))
    return out


def deliver(settings: Settings, app: AvatarCelery, event: api.WebhookEvent) -> dict[str, object]:
    body, auth = signed_webhook(settings, event)
    return handle_livekit_webhook(settings, body, auth, app=app).as_dict()


@pytest.mark.unit
def test_bad_signatures_are_rejected(wh_settings: Settings, wh_app: AvatarCelery) -> None:
    body, auth = signed_webhook(wh_settings, room_event("room_started", "agent-1"))
    with pytest.raises(WebhookSignatureError):
        handle_livekit_webhook(wh_settings, body, "", app=wh_app)
    with pytest.raises(WebhookSignatureError):
        handle_livekit_webhook(wh_settings, body.replace("agent-1", "agent-2"), auth, app=wh_app)
    _, wrong = signed_webhook(wh_settings, room_event("room_started", "agent-1"),
                              secret="another-secret-0123456789abcdef0123456789")
    with pytest.raises(WebhookSignatureError):
        handle_livekit_webhook(wh_settings, body, wrong, app=wh_app)
    with pytest.raises(WebhookSignatureError):
        handle_livekit_webhook(wh_settings, body, "garbage", app=wh_app)
    with session_scope(wh_settings.db.url) as db:
        assert db.query(WebhookEvent).count() == 0


@pytest.mark.unit
def test_not_an_event_is_a_payload_error(wh_settings: Settings, wh_app: AvatarCelery) -> None:
    import base64
    import hashlib

    body = "not json"
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    token = api.AccessToken("testkey", "test-secret-0123456789abcdef0123456789ab").with_sha256(
        digest).to_jwt()
    with pytest.raises(WebhookPayloadError):
        handle_livekit_webhook(wh_settings, body, token, app=wh_app)


@pytest.mark.unit
def test_room_started_creates_one_session_and_enqueues_after_commit(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis
) -> None:
    ev = room_event("room_started", "agent-42", sid="RM_42")
    first = deliver(wh_settings, wh_app, ev)
    assert first["action"] == "session_created"
    retried = deliver(wh_settings, wh_app, ev)  # LiveKit retries the same event
    assert retried["action"] == "duplicate"
    joined = deliver(wh_settings, wh_app,
                     room_event("participant_joined", "agent-42", sid="RM_42", identity="bob"))
    assert joined["action"] == "session_exists" and joined["session_id"] == first["session_id"]
    agent = deliver(wh_settings, wh_app, room_event(
        "participant_joined", "agent-42", sid="RM_42", identity="agent-x", agent=True))
    assert agent["action"] == "ignored"

    assert queued_tasks(queued, "live") == [
        ("tasks.provisioning.provision_session", [first["session_id"]])
    ]
    record = get_session(wh_settings, str(first["session_id"]))
    assert record.source == "webhook" and record.request_key == "webhook:RM_42"
    assert record.room_sid == "RM_42" and record.caller_identity == "bob"
    assert record.spec["session_id"] == record.id


@pytest.mark.unit
def test_rules(wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis) -> None:
    assert deliver(wh_settings, wh_app, room_event("room_started", "other"))["action"] == "ignored"
    out = deliver(wh_settings, wh_app, room_event(
        "room_started", "other-2", metadata=json.dumps({"avatar_agent": {"greeting": "Yo"}})))
    assert out["action"] == "session_created"
    assert get_session(wh_settings, str(out["session_id"])).spec["greeting"] == "Yo"
    assert spec_from_room_metadata('{"avatar_agent": true}') == SessionSpec()
    assert spec_from_room_metadata('{"avatar_agent": {"bogus": 1}}') is None
    assert spec_from_room_metadata("[1]") is None
    assert spec_from_room_metadata("") is None
    assert len(queued_tasks(queued, "live")) == 1


@pytest.mark.unit
def test_room_of_an_api_session_is_not_dispatched_again(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis
) -> None:
    """Our own provisioning creates rooms; their room_started must not start a second agent."""
    sid = new_session(wh_settings, room="agent-api-room")
    out = deliver(wh_settings, wh_app, room_event("room_started", "agent-api-room"))
    assert out == {**out, "action": "session_exists", "session_id": sid}
    assert queued_tasks(queued, "live") == []


@pytest.mark.unit
def test_room_finished_ends_sessions_once(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis
) -> None:
    sid = new_session(wh_settings, room="agent-fin", room_sid="RM_fin", status="active")
    out = deliver(wh_settings, wh_app,
                  room_event("room_finished", "agent-fin", sid="RM_fin", created_at=1_700_000_000))
    assert out["action"] == "session_ended" and out["session_id"] == sid
    again = deliver(wh_settings, wh_app, room_event("room_finished", "agent-fin", sid="RM_fin"))
    assert again["action"] == "ignored"  # a second event id for the same room: already ended
    record = get_session(wh_settings, sid)
    assert record.status == SessionStatus.ENDED and record.end_reason == "room_finished"
    assert record.ended_at is not None and int(record.ended_at.timestamp()) == 1_700_000_000
    assert queued_tasks(queued, "batch") == [("tasks.maintenance.finalize_session", [sid])]


@pytest.mark.unit
def test_nothing_is_enqueued_when_the_transaction_rolls_back(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis
) -> None:
    from tasks.base import enqueue_after_commit

    with pytest.raises(RuntimeError), session_scope(wh_settings.db.url) as db:
        enqueue_after_commit(db, wh_app.signature("tasks.maintenance.ping"))
        raise RuntimeError("view failed")
    with session_scope(wh_settings.db.url) as db:
        enqueue_after_commit(db, wh_app.signature("tasks.maintenance.ping", args=("x",)))
        assert queued_tasks(queued, "batch") == []  # not before the commit
    assert queued_tasks(queued, "batch") == [("tasks.maintenance.ping", ["x"])]


@pytest.mark.unit
def test_a_room_name_longer_than_the_column_is_ignored_not_an_error(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis
) -> None:
    """PostgreSQL refuses values longer than a column (SQLite stores them): a long room name
    or event id must not make every delivery of the webhook fail (LiveKit would retry)."""
    long_room = "agent-" + "x" * 200
    out = deliver(wh_settings, wh_app, room_event("room_started", long_room, event_id="E" * 80))
    assert out["action"] == "ignored" and str(out["event_id"]).startswith("sha256:")
    again = deliver(wh_settings, wh_app, room_event("room_started", long_room, event_id="E" * 80))
    assert again["action"] == "duplicate"
    assert queued_tasks(queued, "live") == []
    ok = deliver(wh_settings, wh_app, room_event("room_started", "agent-" + "y" * 122))
    assert ok["action"] == "session_created"


# --------------------------------------------------------------------------- real server


@pytest.fixture
def live_hooks(
    webhook_livekit: WebhookLiveKit,
    webhook_receiver: WebhookReceiver,
    celery_worker: WorkerProcess,
    sender: AvatarCelery,
    task_settings: Settings,
) -> Iterator[WebhookReceiver]:
    webhook_receiver.handler = lambda body, auth: handle_livekit_webhook(
        task_settings, body, auth, app=sender
    ).as_dict()
    yield webhook_receiver
    webhook_receiver.handler = None


@pytest.mark.integration
async def test_real_webhooks_start_and_finish_a_session(
    live_hooks: WebhookReceiver, task_settings: Settings
) -> None:
    room = unique("wh-")
    async with livekit_client(task_settings) as lk:
        info = await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=120))
    started = live_hooks.wait(lambda d: d.event == "room_started" and d.room == room)
    assert started.outcome is not None and started.outcome["action"] == "session_created"
    sid = str(started.outcome["session_id"])

    record = wait_for(session_when(task_settings, sid, lambda r: r.dispatch_id),
                      timeout=60, what="the dispatch")
    assert record.room_sid == info.sid and record.status == SessionStatus.DISPATCHED

    # LiveKit retries a delivery: the very same body and signature again.
    replay = handle_livekit_webhook(task_settings, started.body, started.auth)
    assert replay.action == "duplicate"

    # A caller joins with a minted token: participant_joined finds the session.
    caller = rtc.Room()
    token = mint_participant_token(task_settings, room=room, identity="caller-1")
    await caller.connect(task_settings.livekit.effective_url, token)
    try:
        joined = live_hooks.wait(lambda d: d.event == "participant_joined" and d.room == room)
        assert joined.outcome is not None and joined.outcome["action"] == "session_exists"
    finally:
        await caller.disconnect()
    assert get_session(task_settings, sid).caller_identity == "caller-1"
    async with livekit_client(task_settings) as lk:
        found = await lk.agent_dispatch.list_dispatch(room)
        assert [d.id for d in found if d.agent_name == task_settings.livekit.agent_name] == [
            record.dispatch_id
        ]
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))

    finished = live_hooks.wait(lambda d: d.event == "room_finished" and d.room == room)
    assert finished.outcome is not None and finished.outcome["action"] == "session_ended"
    assert get_session(task_settings, sid).status == SessionStatus.ENDED

    def finalized() -> bool:
        with session_scope(task_settings.db.url) as db:
            report = db.get(TranscriptReport, sid)
            costs = db.scalars(select(SessionCost).where(SessionCost.session_id == sid)).all()
            return report is not None and any(c.metric == "room_minutes" for c in costs)

    wait_for(finalized, timeout=60, what="the finalize pipeline")


@pytest.mark.integration
async def test_rooms_without_a_rule_get_no_agent(
    live_hooks: WebhookReceiver, task_settings: Settings
) -> None:
    plain, meta = unique("whx-"), unique("whm-")
    async with livekit_client(task_settings) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=plain))
        await lk.room.create_room(api.CreateRoomRequest(
            name=meta, metadata=json.dumps({"avatar_agent": True})))
    ignored = live_hooks.wait(lambda d: d.event == "room_started" and d.room == plain)
    assert ignored.outcome is not None and ignored.outcome["action"] == "ignored"
    wanted = live_hooks.wait(lambda d: d.event == "room_started" and d.room == meta)
    assert wanted.outcome is not None and wanted.outcome["action"] == "session_created"
    with session_scope(task_settings.db.url) as db:
        rooms = db.scalars(select(AgentSessionRecord.room).where(
            AgentSessionRecord.room.in_([plain, meta]))).all()
    assert rooms == [meta]
    async with livekit_client(task_settings) as lk:
        for name in (plain, meta):
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))
