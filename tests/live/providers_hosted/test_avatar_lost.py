"""An avatar participant leaving mid-session: the agent keeps talking with its own audio track.

The real Tavus plugin against the fake API; the fake's worker joins a real room as the avatar
and is then made to drop out (``FakeAvatarWorker.leave``: gone without a word, like a crashed
vendor worker). Runs inside ``scripts/netns-run``:
``scripts/netns-run .venv/bin/pytest tests/live/providers_hosted -q``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, AgentStateChangedEvent
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.room_io import RoomOptions

from fakes.avatar_worker import FakeAvatarWorker
from fakes.tavus_server import TavusFake
from live.providers.fallback import (
    ActiveAvatar,
    AvatarLost,
    AvatarWatch,
    start_avatar_with_fallback,
)
from live.providers.registry import ProviderContext, create
from tests.conftest import LiveKitServer
from tests.live.providers_hosted.test_tavus_room import AGENT, AVATAR, tavus_settings, token_for

pytestmark = pytest.mark.integration

RATE = 24000
WAIT = 20.0  # generous bound on every wait: 2 shared cores


class AvatarStub:
    """A fallback avatar that only records it was started (it leaves the audio alone)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed = False

    async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None:
        self.started.set()

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
async def rooms(livekit_server: LiveKitServer) -> AsyncIterator[tuple[rtc.Room, str, rtc.Room]]:
    """The agent's connection (and its token), and a caller that subscribes to everything."""
    name = f"lost-{uuid.uuid4().hex[:8]}"
    agent_token = token_for(livekit_server, name, AGENT, agent=True)
    agent, caller = rtc.Room(), rtc.Room()
    await agent.connect(livekit_server.url, agent_token)
    await caller.connect(livekit_server.url, token_for(livekit_server, name, "caller-1"))
    yield agent, agent_token, caller
    await caller.disconnect()
    await agent.disconnect()


def tone(seconds: float) -> AsyncIterator[rtc.AudioFrame]:
    """A 220 Hz tone in 20 ms frames, produced as fast as it is read."""

    async def frames() -> AsyncIterator[rtc.AudioFrame]:
        n = int(RATE * seconds)
        samples = (np.sin(np.arange(n) * 2 * np.pi * 220 / RATE) * 8000).astype(np.int16)
        for i in range(0, n, RATE // 50):
            chunk = samples[i : i + RATE // 50]
            yield rtc.AudioFrame(chunk.tobytes(), RATE, 1, len(chunk))

    return frames()


def agent_audio_track(caller: rtc.Room) -> asyncio.Future[rtc.RemoteAudioTrack]:
    """The first audio track the caller receives from the agent participant itself."""
    fut: asyncio.Future[rtc.RemoteAudioTrack] = asyncio.get_running_loop().create_future()

    def on_subscribed(
        track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == AGENT and isinstance(track, rtc.RemoteAudioTrack):
            if not fut.done():
                fut.set_result(track)

    caller.on("track_subscribed", on_subscribed)
    return fut


async def hear_voice(track: rtc.RemoteAudioTrack) -> None:
    """Until a frame on ``track`` carries the tone (silence has no energy)."""
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    try:
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            if len(samples) and float(np.sqrt(np.mean(samples**2))) > 1000.0:
                return
    finally:
        await stream.aclose()


async def wait_state(session: AgentSession, state: str) -> None:
    changed = asyncio.Event()

    def on_state(ev: AgentStateChangedEvent) -> None:
        if ev.new_state == state:
            changed.set()

    session.on("agent_state_changed", on_state)
    try:
        if session.agent_state != state:
            await changed.wait()
    finally:
        session.off("agent_state_changed", on_state)


async def start_with_tavus(
    lk: LiveKitServer,
    fake: TavusFake,
    session: AgentSession,
    room: rtc.Room,
    *,
    fallback: AvatarStub | None = None,
    lost: list[AvatarLost] | None = None,
) -> ActiveAvatar:
    """What the worker does: the avatar first, then the session with the caller's room IO."""
    settings = tavus_settings(lk, fake)
    ctx = ProviderContext(settings)
    chain = [("tavus", lambda: create("avatar", "tavus", settings.avatar, ctx))]
    if fallback is not None:
        chain.append(("local", lambda: fallback))
    active = await start_avatar_with_fallback(
        chain,
        session,
        room,
        join_timeout=WAIT,
        on_avatar_lost=lost.append if lost is not None else None,
        fallback_on_loss=fallback is not None,
    )
    await session.start(
        Agent(instructions="test"),
        room=room,
        room_options=RoomOptions(audio_input=False, close_on_disconnect=False),
        record=False,
    )
    return active


def our_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Errors logged by our code; none may come from the agent's side of the avatar link.

    The fake worker runs in this process too, and its receiver logs its own errors when it
    is cut off; those belong to the avatar, so only agent-side failures are looked for.
    """
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    agent_side = ("clear buffer", "playback finished", "Error in _start_task")
    assert not [r.getMessage() for r in records if r.getMessage().startswith(agent_side)]
    return [r.getMessage() for r in records if r.name.startswith("live.")]


@pytest.fixture
def job(rooms: tuple[rtc.Room, str, rtc.Room]) -> Iterator[None]:
    agent, token, _ = rooms
    with fake_job_context(room=agent, agent_identity=AGENT) as jc:
        jc._info.token = token
        yield


async def test_next_say_is_heard_from_the_agent_after_the_avatar_left(
    livekit_server: LiveKitServer,
    tavus_fake: TavusFake,
    rooms: tuple[rtc.Room, str, rtc.Room],
    job: None,
    http_ctx: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, _, caller = rooms
    session: AgentSession = AgentSession()
    stub = AvatarStub()
    lost: list[AvatarLost] = []
    active = await start_with_tavus(
        livekit_server, tavus_fake, session, agent, fallback=stub, lost=lost
    )
    assert active == "tavus"
    watch = active.watch
    assert isinstance(watch, AvatarWatch) and watch.identity == AVATAR
    (worker,) = tavus_fake.workers
    assert isinstance(worker, FakeAvatarWorker)

    # while the avatar is there, the agent's speech goes to it
    first = session.say("one", audio=tone(0.5))
    await asyncio.wait_for(first, timeout=WAIT)
    assert worker.generator is not None and worker.generator.audio_frames_in > 0
    assert not [p for p in agent.local_participant.track_publications.values()
                if p.kind == rtc.TrackKind.KIND_AUDIO]

    own_track = agent_audio_track(caller)
    await worker.leave()
    gone = await asyncio.wait_for(watch.wait_lost(), timeout=WAIT)
    assert gone.identity == AVATAR and gone.avatar == "tavus"
    assert gone.audio_restored and gone.interrupted_segments == 0
    assert lost == [gone]
    assert not isinstance(session.output.audio, DataStreamAudioOutput)

    # the next say plays on a track the agent publishes itself, and completes
    second = session.say("two", audio=tone(1.0))
    track = await asyncio.wait_for(own_track, timeout=WAIT)
    await asyncio.wait_for(hear_voice(track), timeout=WAIT)
    await asyncio.wait_for(second, timeout=WAIT)
    assert not second.interrupted

    # the configured fallback was tried once the audio was back; it left the audio alone
    assert await asyncio.wait_for(watch.wait_replacement(), timeout=WAIT) == "local"
    assert stub.started.is_set()

    (message,) = our_errors(caplog)
    assert "avatar tavus left the room mid-session (CLIENT_INITIATED)" in message

    await session.aclose()
    assert watch.closed  # at once: the session's own shutdown is no avatar loss
    await watch.aclose()  # waits for the release the close started
    assert stub.closed  # the avatar started in the lost one's place ends with the session


async def test_speech_pending_on_a_vanished_avatar_ends_and_the_agent_goes_on(
    livekit_server: LiveKitServer,
    tavus_fake: TavusFake,
    rooms: tuple[rtc.Room, str, rtc.Room],
    job: None,
    http_ctx: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent, _, caller = rooms
    session: AgentSession = AgentSession()
    active = await start_with_tavus(livekit_server, tavus_fake, session, agent)
    watch = active.watch
    assert watch is not None
    (worker,) = tavus_fake.workers
    assert isinstance(worker, FakeAvatarWorker) and worker.generator is not None

    # 6 s of speech is streamed to the avatar; it dies while playing it
    long = session.say("a long answer", audio=tone(6.0))
    await asyncio.wait_for(worker.generator.audio_started.wait(), timeout=WAIT)
    own_track = agent_audio_track(caller)
    await worker.leave()
    gone = await asyncio.wait_for(watch.wait_lost(), timeout=WAIT)
    assert gone.interrupted_segments == 1

    # the wait for its playback-finished message ends instead of hanging in "speaking"
    await asyncio.wait_for(long, timeout=WAIT)
    await asyncio.wait_for(wait_state(session, "listening"), timeout=WAIT)

    after = session.say("still here", audio=tone(1.0))
    track = await asyncio.wait_for(own_track, timeout=WAIT)
    await asyncio.wait_for(hear_voice(track), timeout=WAIT)
    await asyncio.wait_for(after, timeout=WAIT)
    assert len(our_errors(caplog)) == 1
    await session.aclose()
    assert watch.closed
