"""Provisioning against a real livekit-server, through the real broker and worker."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from livekit import api

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, utcnow
from tasks.app import AvatarCelery
from tasks.provisioning import CLAIM_LEASE, claim_for_provisioning, mint_participant_token
from tests.tasks.conftest import TcpProxy, WebhookLiveKit, WorkerProcess, wait_for
from tests.tasks.helpers import get_session, livekit_client, new_session, session_when, unique

pytestmark = pytest.mark.integration


async def dispatches(settings: Settings, room: str) -> list[api.AgentDispatch]:
    async with livekit_client(settings) as lk:
        return [
            d
            for d in await lk.agent_dispatch.list_dispatch(room)
            if d.agent_name == settings.livekit.agent_name
        ]


@pytest.fixture
def lk(webhook_livekit: WebhookLiveKit, celery_worker: WorkerProcess) -> WebhookLiveKit:
    return webhook_livekit


async def test_provision_creates_room_and_one_dispatch(
    lk: WebhookLiveKit, sender: AvatarCelery, task_settings: Settings
) -> None:
    room = unique("avatar-prov-")
    sid = new_session(task_settings, room=room)

    info = sender.send_task("tasks.provisioning.provision_session", args=(sid,)).get(timeout=60)

    assert info["room"] == room and info["session_id"] == sid
    assert info["url"] == task_settings.livekit.browser_url
    assert "token" not in json.dumps(info)
    record = get_session(task_settings, sid)
    assert record.status == SessionStatus.DISPATCHED
    assert record.dispatch_id == info["dispatch_id"] and record.room_sid
    found = await dispatches(task_settings, room)
    assert [d.id for d in found] == [record.dispatch_id]
    meta = json.loads(found[0].metadata)
    assert meta["session_id"] == sid and meta["version"] == 1
    async with livekit_client(task_settings) as client:
        rooms = await client.room.list_rooms(api.ListRoomsRequest(names=[room]))
    assert [r.sid for r in rooms.rooms] == [record.room_sid]


async def test_repeated_and_concurrent_delivery_dispatch_once(
    lk: WebhookLiveKit, sender: AvatarCelery, task_settings: Settings
) -> None:
    room = unique("avatar-dup-")
    sid = new_session(task_settings, room=room)

    # Two deliveries at once (worker concurrency 2), then one more after they finished.
    first = [
        sender.send_task("tasks.provisioning.provision_session", args=(sid,)) for _ in range(2)
    ]
    results = [r.get(timeout=90) for r in first]
    again = sender.send_task("tasks.provisioning.provision_session", args=(sid,)).get(timeout=60)

    ids = {r["dispatch_id"] for r in [*results, again]}
    assert len(ids) == 1 and None not in ids
    assert len(await dispatches(task_settings, room)) == 1


async def test_crash_after_dispatch_before_commit_reuses_dispatch(
    lk: WebhookLiveKit, sender: AvatarCelery, task_settings: Settings
) -> None:
    """LiveKit created the dispatch but our commit was lost: the retry must reuse it."""
    room = unique("avatar-crash-")
    sid = new_session(task_settings, room=room)
    async with livekit_client(task_settings) as client:
        await client.room.create_room(api.CreateRoomRequest(name=room))
        earlier = await client.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=task_settings.livekit.agent_name,
                room=room,
                metadata=json.dumps({"session_id": sid}),
            )
        )

    info = sender.send_task("tasks.provisioning.provision_session", args=(sid,)).get(timeout=60)

    assert info["dispatch_id"] == earlier.id
    assert [d.id for d in await dispatches(task_settings, room)] == [earlier.id]


async def test_retries_while_livekit_is_unreachable(
    lk: WebhookLiveKit,
    sender: AvatarCelery,
    task_settings: Settings,
    livekit_proxy: TcpProxy,
    celery_worker: WorkerProcess,
) -> None:
    room = unique("avatar-retry-")
    sid = new_session(task_settings, room=room)
    livekit_proxy.stop()
    try:
        result = sender.send_task("tasks.provisioning.provision_session", args=(sid,))
        failed = wait_for(
            session_when(task_settings, sid, lambda r: r.error),
            timeout=60,
            what="the first attempt to fail",
        )
        assert "unreachable" in (failed.error or "")
        # claim released: pending, or already claimed again by the retry (jittered backoff
        # can start it at once); an unreleased claim would block the retry for CLAIM_LEASE
        assert failed.status in (SessionStatus.PENDING, SessionStatus.PROVISIONING)
        assert failed.dispatch_id is None
    finally:
        livekit_proxy.start()

    info = result.get(timeout=CLAIM_LEASE.total_seconds() - 10)

    assert info["status"] == SessionStatus.DISPATCHED
    record = get_session(task_settings, sid)
    assert record.error is None and record.dispatch_id == info["dispatch_id"]
    assert len(await dispatches(task_settings, room)) == 1
    assert f"provision_session[{result.id}] retry" in celery_worker.log_text()


def test_missing_session_is_not_retried(
    lk: WebhookLiveKit, sender: AvatarCelery
) -> None:
    info = sender.send_task(
        "tasks.provisioning.provision_session", args=("0" * 32,)
    ).get(timeout=60)
    assert info == {"session_id": "0" * 32, "status": "missing"}


def test_claim_is_exclusive_until_its_lease_expires(task_settings: Settings) -> None:
    sid = new_session(task_settings, room=unique("avatar-claim-"))
    with session_scope(task_settings.db.url) as db:
        assert claim_for_provisioning(db, sid)
    with session_scope(task_settings.db.url) as db:
        assert not claim_for_provisioning(db, sid)  # a second worker backs off
    with session_scope(task_settings.db.url) as db:
        record = db.get(AgentSessionRecord, sid)
        assert record is not None
        record.provisioned_at = utcnow() - timedelta(minutes=10)  # the holder died
    with session_scope(task_settings.db.url) as db:
        assert claim_for_provisioning(db, sid)


def test_participant_token_grants_one_room_for_a_short_time(task_settings: Settings) -> None:
    token = mint_participant_token(task_settings, room="room-a", identity="caller-1", name="Ann")
    claims = api.TokenVerifier(
        task_settings.livekit.api_key.get_secret_value(),
        task_settings.livekit.api_secret.get_secret_value(),
    ).verify(token)
    assert claims.identity == "caller-1" and claims.name == "Ann"
    assert claims.video is not None
    assert claims.video.room_join and claims.video.room == "room-a"
    assert not claims.video.room_admin and not claims.video.room_create
    short = mint_participant_token(task_settings, room="room-a", identity="c", ttl=60)
    import jwt

    exp = jwt.decode(short, options={"verify_signature": False})
    assert exp["exp"] - exp["nbf"] <= 60
    default = jwt.decode(token, options={"verify_signature": False})
    assert default["exp"] - default["nbf"] <= task_settings.livekit.token_ttl_seconds
