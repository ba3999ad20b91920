"""Hosted avatar vendors added through the catalogue, each with the real plugin against a fake
of its API on 127.0.0.1 whose avatar worker joins a real LiveKit room (as Tavus's does in
test_tavus_room.py).

Runs inside ``scripts/netns-run`` (the ``livekit_server`` fixture runs there):
``scripts/netns-run .venv/bin/pytest tests/live/providers_hosted/test_avatar_vendors.py -q``.
A new vendor is one entry in ``VENDORS``: its fake, the identity its plugin gives the avatar,
the audio rate it streams at, and what its plugin must have posted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc
from livekit.agents import AgentSession, APIStatusError
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

from config import catalog
from config.settings import Settings, load_settings
from fakes.anam_server import AnamFake
from fakes.avatar_worker import FakeAvatarWorker
from fakes.bey_server import BeyFake
from live.providers.fallback import start_avatar_with_fallback
from live.providers.registry import ProviderContext, create
from live.providers.tavus import HostedAvatar
from tests.conftest import LiveKitServer
from tests.live.providers_hosted.test_tavus_room import Joined, token_for, video_track_future

pytestmark = pytest.mark.integration

AGENT = "agent-1"


@dataclass(frozen=True)
class Vendor:
    """How one vendor's plugin talks to its API, as its fake checks it."""

    name: str
    fake: Callable[..., Any]  # the fake server class (an async context manager)
    identity: str  # the avatar participant's identity the plugin mints
    sample_rate: int  # the rate the plugin streams the agent's speech at
    avatar_id: str
    posted: Callable[[Any, Any], tuple[str, str]]  # (fake, request) -> (livekit url, token)


def _anam_posted(fake: AnamFake, req: Any) -> tuple[str, str]:
    assert req.path == "/v1/engine/session"
    assert req.authorization == f"Bearer {fake.api_key}"
    persona = req.body["personaConfig"]
    assert persona["avatarId"] == "anam-avatar-1"
    assert persona["type"] == "ephemeral" and persona["llmId"] == "CUSTOMER_CLIENT_V1"
    env = req.body["environment"]
    return env["livekitUrl"], env["livekitToken"]


def _bey_posted(fake: BeyFake, req: Any) -> tuple[str, str]:
    assert req.path == "/v1/sessions"
    assert req.api_key == fake.api_key
    assert req.body["transport"] == "livekit"
    assert req.body["avatar_id"] == "bey-avatar-1"
    return req.body["url"], req.body["token"]


VENDORS = {
    "anam": Vendor("anam", AnamFake, "anam-avatar-agent", 24000, "anam-avatar-1", _anam_posted),
    "bey": Vendor("bey", BeyFake, "bey-avatar-agent", 16000, "bey-avatar-1", _bey_posted),
}


def test_every_hosted_avatar_in_the_catalogue_has_a_fake() -> None:
    """Tavus and Hedra have their own tests (test_tavus*.py, test_factories.py)."""
    assert {p.name for p in catalog.hosted("avatar")} - {"tavus", "hedra"} == set(VENDORS)


@pytest.fixture(params=sorted(VENDORS))
def vendor(request: pytest.FixtureRequest) -> Vendor:
    return VENDORS[request.param]


@pytest.fixture
def room_name() -> str:
    return f"vendor-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def agent_room(livekit_server: LiveKitServer, room_name: str) -> AsyncIterator[Joined]:
    token = token_for(livekit_server, room_name, AGENT, agent=True)
    room = rtc.Room()
    await room.connect(livekit_server.url, token)
    yield Joined(room, token)
    await room.disconnect()


@pytest.fixture
async def viewer(livekit_server: LiveKitServer, room_name: str) -> AsyncIterator[rtc.Room]:
    room = rtc.Room()
    await room.connect(livekit_server.url, token_for(livekit_server, room_name, "caller-1"))
    yield room
    await room.disconnect()


@pytest.fixture
async def fake(vendor: Vendor) -> AsyncIterator[Any]:
    def worker(url: str, token: str) -> FakeAvatarWorker:
        return FakeAvatarWorker(url, token, sample_rate=vendor.sample_rate)

    async with vendor.fake(make_worker=worker) as server:
        yield server


def vendor_settings(lk: LiveKitServer, vendor: Vendor, fake: Any, **avatar: Any) -> Settings:
    return load_settings(
        _env_file=None,
        livekit={"url": lk.url, "api_key": lk.api_key, "api_secret": lk.api_secret},
        avatar={
            "provider": vendor.name,
            "api_key": fake.api_key,
            "avatar_id": vendor.avatar_id,
            "base_url": fake.api_url,
            **avatar,
        },
    )


async def test_avatar_joins_the_room_publishes_video_and_speaks(
    livekit_server: LiveKitServer,
    vendor: Vendor,
    fake: Any,
    agent_room: Joined,
    viewer: rtc.Room,
    http_ctx: None,
) -> None:
    settings = vendor_settings(livekit_server, vendor, fake)
    video = video_track_future(viewer, vendor.identity)
    session: AgentSession = AgentSession()
    with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
        jc._info.token = agent_room.token
        avatar = create("avatar", vendor.name, settings.avatar, ProviderContext(settings))
        assert isinstance(avatar, HostedAvatar) and avatar.provider == vendor.name
        await avatar.start(session, room=agent_room.room)
        await avatar.wait_for_join(timeout=30)

    # what the plugin posted: one request, the room's URL and a token for the avatar worker
    (req,) = fake.requests
    url, token = vendor.posted(fake, req)
    assert url == livekit_server.url
    claims = api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(token)
    assert claims.identity == vendor.identity
    assert claims.kind == "agent"
    assert (claims.attributes or {}).get(ATTRIBUTE_PUBLISH_ON_BEHALF) == AGENT
    assert claims.video is not None
    assert claims.video.room == agent_room.room.name and claims.video.room_join

    # the agent's speech now goes to the avatar participant, and the caller sees its face
    out = session.output.audio
    assert isinstance(out, DataStreamAudioOutput)
    track = await asyncio.wait_for(video, timeout=30)
    stream = rtc.VideoStream(track)
    try:
        event = await asyncio.wait_for(anext(aiter(stream)), timeout=15)
    finally:
        await stream.aclose()
    assert (event.frame.width, event.frame.height) == (320, 240)

    # the avatar plays the agent's audio: 0.5 s of tone, reported back as played
    rate = 24000
    samples = (np.sin(np.arange(rate // 2) * 2 * np.pi * 220 / rate) * 8000).astype(np.int16)
    for i in range(0, len(samples), rate // 50):
        chunk = samples[i : i + rate // 50]
        await out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
    out.flush()
    played = await asyncio.wait_for(out.wait_for_playout(), timeout=15)
    assert not played.interrupted
    assert played.playback_position > 0.4
    (worker,) = fake.workers
    assert worker.error is None
    assert worker.generator is not None and worker.generator.audio_frames_in > 0
    await avatar.aclose()


async def test_refused_key_is_one_post_and_never_in_the_error(
    livekit_server: LiveKitServer, vendor: Vendor, fake: Any, agent_room: Joined, http_ctx: None
) -> None:
    wrong = "wrong-key-0123456789abcdef"
    settings = vendor_settings(livekit_server, vendor, fake, api_key=wrong)
    with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
        jc._info.token = agent_room.token
        avatar = create("avatar", vendor.name, settings.avatar, ProviderContext(settings))
        with pytest.raises(APIStatusError) as info:
            await avatar.start(AgentSession(), room=agent_room.room)
    assert info.value.status_code == 401 and not info.value.retryable
    assert len(fake.requests) == 1  # a paid POST is never retried
    assert wrong not in f"{info.value!s} {info.value!r} {info.value.body}"
    assert info.value.__cause__ is None and info.value.__context__ is None


async def test_avatar_that_never_joins_falls_back_to_no_avatar(
    livekit_server: LiveKitServer, vendor: Vendor, fake: Any, agent_room: Joined, http_ctx: None
) -> None:
    fake.join_room = False  # the vendor accepts the session, but its worker never comes
    settings = vendor_settings(livekit_server, vendor, fake)
    session: AgentSession = AgentSession()
    ctx = ProviderContext(settings)
    with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
        jc._info.token = agent_room.token
        active = await start_avatar_with_fallback(
            [
                (vendor.name, lambda: create("avatar", vendor.name, settings.avatar, ctx)),
                ("none", lambda: None),
            ],
            session,
            agent_room.room,
            join_timeout=1.0,
        )
    assert active == "none"
    assert len(fake.requests) == 1
    assert session.output.audio is None  # the agent speaks itself again
