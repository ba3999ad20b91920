"""start_avatar_with_fallback: chosen avatar, else the fallback, with one clear error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc
from livekit.agents import AgentSession
from livekit.agents.job import JobContext
from livekit.agents.testing import fake_job_context
from pydantic import SecretStr

from config.settings import AvatarSettings, load_settings
from fakes.tavus_server import TavusFake
from live.providers.fallback import start_avatar_with_fallback
from live.providers.registry import ProviderContext, create

pytestmark = pytest.mark.integration

SECRET = "lk-secret-0123456789abcdef0123456789"


class LocalAvatarStub:
    """Stands in for the local renderer: records that it was started."""

    def __init__(self) -> None:
        self.started_with: tuple[AgentSession, rtc.Room] | None = None

    async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None:
        self.started_with = (agent_session, room)


@pytest.fixture
async def job() -> AsyncIterator[JobContext]:
    room = rtc.Room()
    room._info.name = "room-1"  # never joined: the hosted POSTs fail before anything joins
    with fake_job_context(room=room, agent_identity="agent-1") as jc:
        jc._info.token = (
            api.AccessToken("lk-key", SECRET)
            .with_identity("agent-1")
            .with_grants(api.VideoGrants(room_join=True, room="room-1"))
            .to_jwt()
        )
        yield jc


def provider_ctx(avatar: AvatarSettings) -> ProviderContext:
    return ProviderContext(
        load_settings(
            _env_file=None,
            livekit={"url": "ws://127.0.0.1:9", "api_key": "lk-key", "api_secret": SECRET},
            avatar=avatar.model_dump(),
        )
    )


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_tavus_failure_falls_back_to_local(
    tavus_fake: TavusFake, job: JobContext, http_ctx: None, caplog: pytest.LogCaptureFixture
) -> None:
    tavus_fake.fail_status = 500
    opts = AvatarSettings(
        provider="tavus", api_key=SecretStr(tavus_fake.api_key), base_url=tavus_fake.api_url
    )
    ctx = provider_ctx(opts)
    local = LocalAvatarStub()
    session: AgentSession = AgentSession()
    active = await start_avatar_with_fallback(
        [("tavus", lambda: create("avatar", "tavus", opts, ctx)), ("local", lambda: local)],
        session,
        job.room,
    )
    assert active == "local"
    assert local.started_with == (session, job.room)
    assert len(tavus_fake.requests) == 1
    (record,) = errors(caplog)
    message = record.getMessage()
    assert "avatar tavus failed; using 'local'" in message
    assert "status_code=500" in message
    assert tavus_fake.api_key not in message and SECRET not in message


async def test_hedra_is_discontinued_and_local_takes_over(
    job: JobContext, caplog: pytest.LogCaptureFixture
) -> None:
    opts = AvatarSettings(provider="hedra", api_key=SecretStr("hedra-key-0123456789"))
    ctx = provider_ctx(opts)
    local = LocalAvatarStub()
    active = await start_avatar_with_fallback(
        [("hedra", lambda: create("avatar", "hedra", opts, ctx)), ("local", lambda: local)],
        AgentSession(),
        job.room,
    )
    assert active == "local"
    assert local.started_with is not None
    (record,) = errors(caplog)
    assert (
        "hedra: Hedra's realtime avatar service is discontinued; falling back to local"
        in record.getMessage()
    )
    assert "hedra-key-0123456789" not in record.getMessage()


async def test_every_avatar_failing_leaves_the_agent_without_one(
    job: JobContext, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None:
            raise FileNotFoundError("portrait pack missing")

    opts = AvatarSettings(provider="hedra", fallback="local")
    ctx = provider_ctx(opts)
    active = await start_avatar_with_fallback(
        [("hedra", lambda: create("avatar", "hedra", opts, ctx)), ("local", Broken)],
        AgentSession(),
        job.room,
    )
    assert active == "none"
    (record,) = errors(caplog)
    assert "using no avatar" in record.getMessage()
    assert "local: FileNotFoundError: portrait pack missing" in record.getMessage()


async def test_chosen_avatar_working_logs_nothing(
    job: JobContext, caplog: pytest.LogCaptureFixture
) -> None:
    local = LocalAvatarStub()
    active = await start_avatar_with_fallback([("local", lambda: local)], AgentSession(), job.room)
    assert active == "local"
    assert errors(caplog) == []
