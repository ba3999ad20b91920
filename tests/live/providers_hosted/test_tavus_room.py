"""The real Tavus plugin against the fake API, with the fake's avatar joining a real room.

Runs inside ``scripts/netns-run`` (the ``livekit_server`` fixture skips elsewhere):
``scripts/netns-run .venv/bin/pytest tests/live/providers_hosted -q``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from livekit import api, rtc
from livekit.agents import AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

from config.settings import Settings, load_settings
from fakes.avatar_worker import FakeAvatarWorker
from fakes.tavus_server import TavusFake
from live.providers.fallback import start_avatar_with_fallback
from live.providers.registry import ProviderContext, create
from live.providers.tavus import HostedAvatar
from tests.conftest import LiveKitServer

pytestmark = pytest.mark.integration

AGENT = "agent-1"
AVATAR = "tavus-avatar-agent"  # the plugin's default avatar identity
logger = logging.getLogger(__name__)


@dataclass
class Joined:
    room: rtc.Room
    token: str


def token_for(lk: LiveKitServer, room: str, identity: str, *, agent: bool = False) -> str:
    tok = api.AccessToken(lk.api_key, lk.api_secret).with_identity(identity)
    if agent:
        tok = tok.with_kind("agent")
    return tok.with_grants(api.VideoGrants(room_join=True, room=room, agent=agent)).to_jwt()


@pytest.fixture
def room_name() -> str:
    return f"tavus-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def agent_room(livekit_server: LiveKitServer, room_name: str) -> AsyncIterator[Joined]:
    """The agent's own connection, as the worker's job would have it."""
    token = token_for(livekit_server, room_name, AGENT, agent=True)
    room = rtc.Room()
    await room.connect(livekit_server.url, token)
    yield Joined(room, token)
    await room.disconnect()


@pytest.fixture
async def viewer(livekit_server: LiveKitServer, room_name: str) -> AsyncIterator[rtc.Room]:
    """A caller in the same room (what the browser would be)."""
    room = rtc.Room()
    await room.connect(livekit_server.url, token_for(livekit_server, room_name, "caller-1"))
    yield room
    await room.disconnect()


def tavus_settings(lk: LiveKitServer, fake: TavusFake) -> Settings:
    return load_settings(
        _env_file=None,
        livekit={"url": lk.url, "api_key": lk.api_key, "api_secret": lk.api_secret},
        avatar={
            "provider": "tavus",
            "api_key": fake.api_key,
            "avatar_id": "face-123",
            "replica_id": "pal-456",
            "base_url": fake.api_url,
        },
    )


def video_track_future(room: rtc.Room, identity: str) -> asyncio.Future[rtc.RemoteVideoTrack]:
    fut: asyncio.Future[rtc.RemoteVideoTrack] = asyncio.get_running_loop().create_future()

    def on_subscribed(
        track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == identity and isinstance(track, rtc.RemoteVideoTrack):
            if not fut.done():
                fut.set_result(track)

    room.on("track_subscribed", on_subscribed)
    return fut


@dataclass
class RendererAvatarWorker:
    """The same vendor-worker role played by our own renderer (``live.avatar.runner``)."""

    url: str
    token: str
    width: int = 320
    height: int = 240
    fps: int = 15
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        from live.avatar.options import LocalAvatarOptions
        from live.avatar.runner import run_avatar_participant

        opts = LocalAvatarOptions(
            mode="participant", width=self.width, height=self.height, fps=self.fps
        )
        try:
            await run_avatar_participant(self.url, self.token, options=opts, ready=self.joined)
        except Exception as err:  # surfaced to the test through .error
            self.error = err
            logger.exception("renderer avatar worker failed")


async def test_avatar_joins_the_room_and_publishes_video(
    livekit_server: LiveKitServer,
    tavus_fake: TavusFake,
    agent_room: Joined,
    viewer: rtc.Room,
    http_ctx: None,
) -> None:
    settings = tavus_settings(livekit_server, tavus_fake)
    video = video_track_future(viewer, AVATAR)
    session: AgentSession = AgentSession()
    with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
        jc._info.token = agent_room.token
        avatar = create("avatar", "tavus", settings.avatar, ProviderContext(settings))
        assert isinstance(avatar, HostedAvatar)
        await avatar.start(session, room=agent_room.room)
        await avatar.wait_for_join(timeout=30)

    # what the plugin posted
    (req,) = tavus_fake.requests
    assert req.path == "/v2/conversations"
    assert req.api_key == tavus_fake.api_key
    assert req.body["face_id"] == "face-123"
    assert req.body["pal_id"] == "pal-456"
    props = req.body["properties"]
    assert props["livekit_ws_url"] == livekit_server.url
    claims = api.TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(
        props["livekit_room_token"]
    )
    assert claims.identity == AVATAR
    assert claims.kind == "agent"
    assert (claims.attributes or {}).get(ATTRIBUTE_PUBLISH_ON_BEHALF) == AGENT
    assert claims.video is not None
    assert claims.video.room == agent_room.room.name and claims.video.room_join

    # the agent's speech now goes to the avatar participant
    assert isinstance(session.output.audio, DataStreamAudioOutput)

    # the caller sees the avatar's face
    track = await asyncio.wait_for(video, timeout=30)
    stream = rtc.VideoStream(track)
    try:
        event = await asyncio.wait_for(anext(aiter(stream)), timeout=15)
    finally:
        await stream.aclose()
    assert (event.frame.width, event.frame.height) == (320, 240)

    # and the avatar speaks the agent's audio: push 0.5 s of tone through the data stream
    out = session.output.audio
    rate = 24000
    samples = (np.sin(np.arange(rate // 2) * 2 * np.pi * 220 / rate) * 8000).astype(np.int16)
    for i in range(0, len(samples), rate // 50):
        chunk = samples[i : i + rate // 50]
        await out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
    out.flush()
    played = await asyncio.wait_for(out.wait_for_playout(), timeout=15)
    assert not played.interrupted
    assert played.playback_position > 0.4
    (worker,) = tavus_fake.workers
    assert isinstance(worker, FakeAvatarWorker)
    assert worker.error is None
    assert worker.generator is not None and worker.generator.audio_frames_in > 0
    await avatar.aclose()


async def test_our_renderer_can_play_the_vendor_worker(
    livekit_server: LiveKitServer,
    agent_room: Joined,
    viewer: rtc.Room,
    http_ctx: None,
) -> None:
    """The fake Tavus worker role played by live.avatar's renderer (a real face)."""
    pytest.importorskip("live.avatar.runner")
    video = video_track_future(viewer, AVATAR)
    async with TavusFake(make_worker=RendererAvatarWorker) as fake:
        settings = tavus_settings(livekit_server, fake)
        with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
            jc._info.token = agent_room.token
            avatar = create("avatar", "tavus", settings.avatar, ProviderContext(settings))
            await avatar.start(AgentSession(), room=agent_room.room)
            await avatar.wait_for_join(timeout=60)
        track = await asyncio.wait_for(video, timeout=30)
        stream = rtc.VideoStream(track)
        try:
            event = await asyncio.wait_for(anext(aiter(stream)), timeout=30)
        finally:
            await stream.aclose()
        assert (event.frame.width, event.frame.height) == (320, 240)
        assert all(w.error is None for w in fake.workers)
        await avatar.aclose()


async def test_avatar_that_never_joins_falls_back_to_no_avatar(
    livekit_server: LiveKitServer,
    tavus_fake: TavusFake,
    agent_room: Joined,
    http_ctx: None,
) -> None:
    tavus_fake.join_room = False  # Tavus accepts the conversation, but its worker never comes
    settings = tavus_settings(livekit_server, tavus_fake)
    session: AgentSession = AgentSession()
    ctx = ProviderContext(settings)
    with fake_job_context(room=agent_room.room, agent_identity=AGENT) as jc:
        jc._info.token = agent_room.token
        active = await start_avatar_with_fallback(
            [
                ("tavus", lambda: create("avatar", "tavus", settings.avatar, ctx)),
                ("none", lambda: None),
            ],
            session,
            agent_room.room,
            join_timeout=1.0,
        )
    assert active == "none"
    assert len(tavus_fake.requests) == 1
    # the data-stream output to the absent avatar was removed again: the agent speaks itself
    assert session.output.audio is None
