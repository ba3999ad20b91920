"""The LiveKit server restarts (crash and start again) while a session is running.

Against a livekit-server of this test's own (the suite's shared one must not be restarted),
with a live worker and a Celery worker started from the same commands as the `stack` fixture:
the session cut by the restart is finalised and billed, the live worker registers again, and
a new session then starts on it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api, rtc

from cli.services import (
    LiveKitServerConfig,
    start_livekit_server,
    stop_process,
)
from store.db import session_scope, upgrade_db
from store.models import AgentSessionRecord
from tests.conftest import (
    TEST_API_KEY,
    TEST_API_SECRET,
    LiveKitServer,
    Stack,
    spawn_stack_workers,
    stack_env,
)
from tests.e2e.test_worker_killed import _dispatch, _greeted, _record
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class RestartableStack:
    stack: Stack
    cfg: LiveKitServerConfig
    server: subprocess.Popen[bytes]  # the livekit-server process

    def registrations(self) -> int:
        return self.stack.log_text("live").count("registered worker")


@pytest.fixture
def own_stack(valkey_url: str, tmp_path: Path) -> Iterator[RestartableStack]:
    """livekit-server, live worker and Celery worker of this test only."""
    if os.environ.get("AVATAR_NETNS") != "1":
        pytest.fail("WebRTC tests run only inside the private network namespace")
    cfg = LiveKitServerConfig.on_free_ports(api_key=TEST_API_KEY, api_secret=TEST_API_SECRET)
    lk_log = tmp_path / "livekit.log"
    server = start_livekit_server(cfg, log_path=lk_log)
    livekit = LiveKitServer(f"ws://127.0.0.1:{cfg.port}", TEST_API_KEY, TEST_API_SECRET,
                            cfg.node_ip, lk_log)
    redis_url = valkey_url.rsplit("/", 1)[0] + "/15"  # the cluster fixture has 12 and 13
    db_url = f"sqlite:///{tmp_path / 'restart.db'}"
    upgrade_db(db_url)
    env = stack_env(livekit, redis_url, db_url, tmp_path)
    logs = {"live": tmp_path / "live.log", "celery": tmp_path / "celery.log"}
    celery, live = spawn_stack_workers(env, logs, "restart")
    st = Stack(livekit, redis_url, db_url, env, tmp_path, logs)
    own = RestartableStack(st, cfg, server)
    try:
        wait_for(lambda: own.registrations() >= 1 or live.poll() is not None, 180,
                 "the live worker to register")
        assert live.poll() is None, st.log_text("live")[-4000:]
        wait_for(lambda: "ready." in st.log_text("celery") or celery.poll() is not None, 120,
                 "the celery worker")
        assert celery.poll() is None, st.log_text("celery")[-4000:]
        yield own
    finally:
        for proc in (live, celery):
            stop_process(proc, timeout=20)
        stop_process(own.server, timeout=5)


async def test_livekit_restart_finalises_cut_sessions_and_workers_register_again(
    own_stack: RestartableStack,
) -> None:
    from tasks.provisioning import mint_participant_token

    stack = own_stack.stack
    settings = stack.settings()
    sid = await _dispatch(stack, "before-restart")
    caller = rtc.Room()
    await caller.connect(settings.livekit.effective_url,
                         mint_participant_token(settings, room="before-restart", identity="c1"))
    try:
        await asyncio.to_thread(wait_for, lambda: _greeted(stack, sid), 180,
                                "the greeting said and stored")
        assert _record(stack, sid).status == "active"

        # The server crashes and comes back on the same address (its rooms are gone).
        crashed = own_stack.server
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait(10)
        own_stack.server = await asyncio.to_thread(
            start_livekit_server, own_stack.cfg, stack.livekit.log)

        await asyncio.to_thread(
            wait_for, lambda: _record(stack, sid).status == "ended", 120,
            "the cut session to be ended by its worker")
        await asyncio.to_thread(wait_for, lambda: _record(stack, sid).billed_at, 120,
                                "the cut session to be billed")
        await asyncio.to_thread(wait_for, lambda: own_stack.registrations() >= 2, 120,
                                "the live worker to register again")
    finally:
        await caller.disconnect()
    rec = _record(stack, sid)
    assert rec.ended_at is not None and rec.end_reason

    # A new session starts on the restarted server.
    other = await _dispatch(stack, "after-restart")
    other_caller = rtc.Room()
    await other_caller.connect(
        settings.livekit.effective_url,
        mint_participant_token(settings, room="after-restart", identity="c2"))
    try:
        await asyncio.to_thread(wait_for, lambda: _greeted(stack, other), 180,
                                "a new session to greet its caller")
    finally:
        await other_caller.disconnect()
        async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key,
                                  stack.livekit.api_secret) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room="after-restart"))
    with session_scope(stack.db_url) as db:
        assert db.get(AgentSessionRecord, other) is not None
