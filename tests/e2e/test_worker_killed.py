"""The live worker's job process is SIGKILLed mid-session while the caller stays in the room.

Against the real stack (livekit-server, the live worker, Celery): what was said is in the
store, usage up to the last few seconds (avatar seconds included) is recorded, reconciliation
finalises and bills the session and closes the room, and new sessions work.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta

import pytest
from livekit import api, rtc
from sqlalchemy import select

from store.db import session_scope
from store.models import AgentSessionRecord, SessionCost, TranscriptLine, UsageRecord
from tasks.app import make_celery
from tests.conftest import Stack
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _record(stack: Stack, sid: str) -> AgentSessionRecord:
    with session_scope(stack.db_url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        return rec


def _avatar_seconds(stack: Stack, sid: str) -> float:
    with session_scope(stack.db_url) as db:
        qty = db.scalar(select(UsageRecord.quantity).where(
            UsageRecord.session_id == sid, UsageRecord.metric == "avatar_seconds"))
        return float(qty or 0.0)


async def _dispatch(stack: Stack, room: str) -> str:
    settings = stack.settings()
    with session_scope(stack.db_url) as db:
        rec = AgentSessionRecord(room=room, source="api", status="dispatched")
        db.add(rec)
        db.flush()
        sid = rec.id
    async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key,
                              stack.livekit.api_secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=120))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=settings.livekit.agent_name, room=room,
            metadata=json.dumps({"session_id": sid, "greeting": "Hello, I am here."}),
        ))
    return sid


async def test_sigkilled_live_worker_session_is_recorded_finalised_and_billed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import maintenance
    from tasks.provisioning import mint_participant_token

    settings = stack.settings()
    room = "killed-worker"
    sid = await _dispatch(stack, room)
    caller = rtc.Room()
    await caller.connect(settings.livekit.effective_url,
                         mint_participant_token(settings, room=room, identity="stays"))
    try:
        # Running: the greeting is said and stored, usage and heartbeats are being written.
        await asyncio.to_thread(
            wait_for, lambda: _avatar_seconds(stack, sid) >= 5.0 and _greeted(stack, sid), 180,
            "the greeting stored and avatar seconds being written")
        rec = _record(stack, sid)
        assert rec.status == "active" and rec.heartbeat_at is not None and rec.worker_id
        job_pid = int(rec.worker_id.split(":")[1])  # host:pid:job
        os.kill(job_pid, signal.SIGKILL)
        metered = _avatar_seconds(stack, sid)

        # The beat job, with thresholds short enough for a test: no beat for 8 s is a lost
        # worker (it beats every 5 s).
        monkeypatch.setattr(maintenance, "HEARTBEAT_STALE", timedelta(seconds=8))
        monkeypatch.setattr(maintenance, "RECONCILE_GRACE", timedelta(0))
        app = make_celery(settings, set_as_current=False)
        await asyncio.to_thread(
            lambda: wait_for(lambda: maintenance.reconcile(settings, app)["closed"] >= 1
                             and _record(stack, sid).status == "ended", 90,
                             "reconciliation to end it", interval=1.0))
        rec = _record(stack, sid)
        assert rec.end_reason == "worker_lost"
        await asyncio.to_thread(wait_for, lambda: _record(stack, sid).billed_at, 120,
                                "the session billed")
        with session_scope(stack.db_url) as db:
            billed = db.scalar(select(SessionCost.quantity).where(
                SessionCost.session_id == sid, SessionCost.metric == "avatar_seconds"))
        assert billed is not None and billed >= metered
        # The caller is not left in a room nobody answers in.
        await asyncio.to_thread(
            wait_for, lambda: caller.connection_state != rtc.ConnectionState.CONN_CONNECTED, 60,
            "the caller disconnected")
    finally:
        await caller.disconnect()

    # The worker takes new sessions.
    other = await _dispatch(stack, "after-kill")
    other_caller = rtc.Room()
    await other_caller.connect(settings.livekit.effective_url,
                               mint_participant_token(settings, room="after-kill", identity="next"))
    try:
        await asyncio.to_thread(wait_for, lambda: _record(stack, other).status == "active", 180,
                                "a new session to start")
    finally:
        await other_caller.disconnect()
        async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key,
                                  stack.livekit.api_secret) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room="after-kill"))


def _greeted(stack: Stack, sid: str) -> bool:
    with session_scope(stack.db_url) as db:
        return db.scalar(select(TranscriptLine.id).where(
            TranscriptLine.session_id == sid, TranscriptLine.speaker == "agent")) is not None
