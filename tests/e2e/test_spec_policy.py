"""The live worker itself refuses dispatch metadata beyond the operator's settings (issue #12,
items 1 and 6): a dispatch written by hand, or a spec stored before the rule."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import api

from store.db import session_scope
from store.models import AgentSessionRecord
from tests.conftest import Stack
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(stack: Stack, session_id: str) -> str | None:
    with session_scope(stack.db_url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        return rec.status if rec else None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"llm": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}}, "base_url"),
        ({"llm": {"provider": "openai", "endpoint": "elsewhere"}}, "llm.endpoint"),
        ({"max_session_minutes": 600}, "max_session_minutes"),
        ({"avatar": {"provider": "local", "avatar_id": "nobody"}}, "avatar.avatar_id"),
    ],
)
async def test_worker_refuses_a_spec_beyond_the_operator(
    stack: Stack, spec: dict[str, object], field: str
) -> None:
    settings = stack.settings()
    room = f"refused-{field.replace('.', '-').replace('_', '-')}"
    with session_scope(stack.db_url) as db:
        rec = AgentSessionRecord(room=room, source="api", status="dispatched")
        db.add(rec)
        db.flush()
        sid = rec.id
    async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key,
                              stack.livekit.api_secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=settings.livekit.agent_name, room=room,
            metadata=json.dumps({**spec, "session_id": sid}),
        ))
    await asyncio.to_thread(wait_for, lambda: _status(stack, sid) == "failed", 60, "session failed")
    with session_scope(stack.db_url) as db:
        err = db.get(AgentSessionRecord, sid).error  # type: ignore[union-attr]
    assert err and field in err
    assert "127.0.0.1:9" not in err
