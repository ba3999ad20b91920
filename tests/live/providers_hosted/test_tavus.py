"""Tavus adapter failure paths against the fake API: one POST, bounded, no secrets in errors.

The room is never connected here (the POST fails before anything joins); the joined-room path
is in test_tavus_room.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc
from livekit.agents import AgentSession, APIConnectionError, APIStatusError, APITimeoutError
from livekit.agents.job import JobContext
from livekit.agents.testing import fake_job_context

from fakes.tavus_server import TavusFake
from live.providers.tavus import HostedAvatar, LiveKitCredentials, TavusOptions, build_avatar

pytestmark = pytest.mark.integration

LK = LiveKitCredentials(
    url="ws://127.0.0.1:9", api_key="lk-key", api_secret="lk-secret-0123456789abcdef0123456789"
)
AGENT = "agent-1"


def agent_token(room: str = "room-1") -> str:
    return (
        api.AccessToken(LK.api_key, LK.api_secret)
        .with_identity(AGENT)
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room=room, agent=True))
        .to_jwt()
    )


def unconnected_room(name: str = "room-1") -> rtc.Room:
    """A room never joined: these POSTs fail before anything could join it."""
    room = rtc.Room()
    room._info.name = name  # what connect() would have filled in (the token grant needs it)
    return room


@pytest.fixture
async def job() -> AsyncIterator[JobContext]:
    """A job context like the worker's: the avatar token names the agent it speaks for."""
    with fake_job_context(room=unconnected_room(), agent_identity=AGENT) as jc:
        jc._info.token = agent_token()
        yield jc


def avatar_for(
    fake: TavusFake, *, api_key: str | None = None, start_timeout: float = 10.0
) -> HostedAvatar:
    return build_avatar(
        TavusOptions(
            api_key=api_key or fake.api_key,
            face_id="face-1",
            pal_id="pal-1",
            api_url=fake.api_url,
            start_timeout=start_timeout,
        ),
        LK,
    )


def chain_text(err: BaseException) -> str:
    """Everything an error would print: message, repr, and its whole cause/context chain."""
    parts: list[str] = []
    cur: BaseException | None = err
    while cur is not None:
        parts += [str(cur), repr(cur), str(getattr(cur, "body", ""))]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


async def test_server_error_is_final_and_not_retried(
    tavus_fake: TavusFake, job: JobContext, http_ctx: None
) -> None:
    tavus_fake.fail_status = 500
    avatar = avatar_for(tavus_fake)
    session: AgentSession = AgentSession()
    with pytest.raises(APIStatusError) as info:
        await avatar.start(session, room=job.room)
    assert info.value.status_code == 500
    assert not info.value.retryable
    assert len(tavus_fake.requests) == 1  # a paid POST is never repeated blindly
    assert session.output.audio is None  # the agent still speaks through the room


async def test_rejected_key_never_appears_in_the_error(
    tavus_fake: TavusFake, job: JobContext, http_ctx: None
) -> None:
    wrong = "tvs-WRONG-secret-key-987654321"
    avatar = avatar_for(tavus_fake, api_key=wrong)
    with pytest.raises(APIStatusError) as info:
        await avatar.start(AgentSession(), room=job.room)
    assert info.value.status_code == 401
    assert tavus_fake.requests[0].api_key == wrong  # the fake did echo it back in its body
    text = chain_text(info.value)
    assert "Invalid access token ***" in text
    assert wrong not in text
    assert LK.api_secret not in text
    assert len(tavus_fake.requests) == 1


async def test_silent_server_times_out_once(
    tavus_fake: TavusFake, job: JobContext, http_ctx: None
) -> None:
    tavus_fake.hang = True
    avatar = avatar_for(tavus_fake, start_timeout=0.5)
    with pytest.raises(APITimeoutError) as info:
        await avatar.start(AgentSession(), room=job.room)
    assert not info.value.retryable
    assert len(tavus_fake.requests) == 1


async def test_unreachable_api_is_a_connection_error(job: JobContext, http_ctx: None) -> None:
    fake = TavusFake()
    await fake.start()
    await fake.stop()  # the port is now closed: nothing listens there
    avatar = avatar_for(fake)
    with pytest.raises(APIConnectionError) as info:
        await avatar.start(AgentSession(), room=job.room)
    assert "tavus API unreachable" in str(info.value)
    assert fake.api_key not in chain_text(info.value)


async def test_start_twice_is_refused(
    tavus_fake: TavusFake, job: JobContext, http_ctx: None
) -> None:
    tavus_fake.fail_status = 502
    avatar = avatar_for(tavus_fake)
    with pytest.raises(APIStatusError):
        await avatar.start(AgentSession(), room=job.room)
    with pytest.raises(RuntimeError, match="already started"):
        await avatar.start(AgentSession(), room=job.room)
    assert len(tavus_fake.requests) == 1
