"""The avatar in a real LiveKit room: a subscriber gets its audio and video, in sync.

Runs inside scripts/netns-run (the ``livekit_server`` fixture skips otherwise).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from livekit import api, rtc
from livekit.agents import AgentSession
from livekit.agents.metrics.base import AvatarMetrics
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.io import AudioOutput, PlaybackFinishedEvent

from live.avatar import LocalAvatarOptions, LocalAvatarSession
from live.avatar.face import FaceRenderer
from live.avatar.portrait import load_pack
from tests.live.avatar.conftest import SpeechClip, dark_fraction
from tests.waiting import wait_event

pytestmark = pytest.mark.integration

W = H = 512
BIN = 0.04  # analysis bin: one video frame at 25 fps


def token(server: object, identity: str, room: str, *, agent: bool = False) -> str:
    t = (
        api.AccessToken(server.api_key, server.api_secret)  # type: ignore[attr-defined]
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
    )
    if agent:
        t = t.with_kind("agent")
    return t.to_jwt()


@dataclass
class Received:
    """What the subscriber got from one publisher, stamped on arrival."""

    publisher: str
    box: tuple[int, int, int, int]
    audio: list[tuple[float, float]] = field(default_factory=list)  # (t, rms)
    video: list[tuple[float, float]] = field(default_factory=list)  # (t, mouth dark share)
    tracks: set[int] = field(default_factory=set)
    both: asyncio.Event = field(default_factory=asyncio.Event)
    seen: asyncio.Event = field(default_factory=asyncio.Event)  # first video frame decoded
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def attach(self, room: rtc.Room) -> None:
        def on_sub(track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                   p: rtc.RemoteParticipant) -> None:
            if p.identity != self.publisher:
                return
            self.attributes = dict(p.attributes)
            self.tracks.add(track.kind)
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self.tasks.append(asyncio.create_task(self._audio(rtc.AudioStream(track))))
            elif track.kind == rtc.TrackKind.KIND_VIDEO:
                self.tasks.append(asyncio.create_task(self._video(rtc.VideoStream(track))))
            if len(self.tracks) == 2:
                self.both.set()

        room.on("track_subscribed", on_sub)

    async def _audio(self, stream: rtc.AudioStream) -> None:
        async for ev in stream:
            x = np.frombuffer(ev.frame.data, np.int16).astype(np.float32)
            self.audio.append((time.monotonic(), float(np.sqrt(np.mean(x * x)))))

    async def _video(self, stream: rtc.VideoStream) -> None:
        async for ev in stream:
            f = ev.frame.convert(rtc.VideoBufferType.RGBA)
            img = np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 4)
            if (f.width, f.height) != (W, H):  # a lower simulcast layer: compare at full size
                img = np.asarray(cv2.resize(img, (W, H)), dtype=np.uint8)
            self.video.append((time.monotonic(), dark_fraction(img, self.box)))
            self.seen.set()

    async def aclose(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def binned(samples: list[tuple[float, float]], t0: float, t1: float) -> np.ndarray:
    n = int((t1 - t0) / BIN)
    out = np.zeros(n)
    cnt = np.zeros(n)
    for t, v in samples:
        k = int((t - t0) / BIN)
        if 0 <= k < n:
            out[k] += v
            cnt[k] += 1
    filled = np.where(cnt > 0, out / np.maximum(cnt, 1), np.nan)
    idx = np.arange(n)
    ok = ~np.isnan(filled)
    return np.interp(idx, idx[ok], filled[ok])


def av_lag(rx: Received, t0: float, t1: float) -> tuple[float, float]:
    """Lag (s) of mouth movement behind the audio envelope, and the correlation there."""
    a = binned(rx.audio, t0, t1)
    v = binned(rx.video, t0, t1)
    best = (0.0, -1.0)
    for k in range(-10, 11):  # +-400 ms
        if k >= 0:
            x, y = a[: len(a) - k], v[k:]
        else:
            x, y = a[-k:], v[: len(v) + k]
        r = float(np.corrcoef(x, y)[0, 1])
        if r > best[1]:
            best = (k * BIN, r)
    return best


async def play(out: AudioOutput, clip: SpeechClip) -> None:
    step = clip.sample_rate // 50
    for i in range(0, clip.samples.size, step):
        part = clip.samples[i:i + step]
        await out.capture_frame(rtc.AudioFrame(part.tobytes(), clip.sample_rate, 1, part.size))
    out.flush()


@pytest.fixture
async def rooms(livekit_server: object, request: pytest.FixtureRequest) -> AsyncIterator[
        tuple[rtc.Room, rtc.Room, str]]:
    name = f"avatar-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    agent, user = rtc.Room(), rtc.Room()
    yield agent, user, name
    await user.disconnect()
    await agent.disconnect()


async def exercise(
    avatar: LocalAvatarSession, session: AgentSession, agent: rtc.Room, user: rtc.Room,
    name: str, server: object, publisher: str, clip: SpeechClip, artifacts: Path,
) -> Received:
    box = FaceRenderer(load_pack(), width=W, height=H).mouth_box()
    rx = Received(publisher=publisher, box=box)
    rx.attach(user)
    await user.connect(server.url, token(server, "user", name))  # type: ignore[attr-defined]
    metrics: list[object] = []
    session.on("metrics_collected", lambda ev: metrics.append(ev.metrics))
    await avatar.start(session, room=agent)
    await avatar.wait_for_join(timeout=20)
    # LiveKit's AvatarSession base: the publisher of the face, and its join reported
    assert avatar.avatar_identity == publisher
    assert any(isinstance(m, AvatarMetrics) and m.avatar_joined_time for m in metrics), metrics
    out = session.output.audio
    assert out is not None
    finished: list[PlaybackFinishedEvent] = []
    got_finished = asyncio.Event()

    def on_finished(ev: PlaybackFinishedEvent) -> None:
        finished.append(ev)
        got_finished.set()

    out.on("playback_finished", on_finished)
    started: list[float] = []
    out.on("playback_started", lambda _ev: started.append(time.monotonic()))
    # the avatar publishes with its first (idle) frame; speech then plays through it.
    # Subscribed is not yet seen: on a busy machine the first frame was decoded 0.6 s
    # after the subscription, and speech played to a face not yet on screen (r 0.39).
    await wait_event(rx.both, "the avatar's audio and video tracks")
    await wait_event(rx.seen, "the avatar's first video frame at the subscriber")
    t0 = time.monotonic()
    await play(out, clip)
    await wait_event(got_finished, "playback finished", clip.duration + 15)
    t1 = time.monotonic()
    assert finished[0].interrupted is False
    assert finished[0].playback_position == pytest.approx(clip.duration, abs=0.2)
    lag, r = av_lag(rx, t0, t1)
    (artifacts / f"room_sync_{publisher}.txt").write_text(
        f"mouth vs audio at the subscriber: lag {lag * 1000:.0f} ms, r {r:.2f}; "
        f"{sum(t0 <= t <= t1 for t, _ in rx.video)} video frames over {t1 - t0:.1f} s\n"
    )
    assert r >= 0.5, (lag, r)
    assert abs(lag) <= 0.16, (lag, r)  # measured -40..+120 ms on a loaded 2-core box

    # interruption: clear mid-speech -> reported interrupted, sound stops
    got_finished.clear()
    n_started = len(started)
    feeder = asyncio.create_task(play(out, clip))
    loud = asyncio.get_running_loop().create_future()

    def watch_loud() -> None:
        # speech of this segment: loud audio heard after the avatar reported it started
        if len(started) > n_started and any(
            t > started[-1] + 0.1 and v > 500 for t, v in rx.audio[-20:]
        ):
            if not loud.done():
                loud.set_result(None)
        else:
            asyncio.get_running_loop().call_later(0.01, watch_loud)

    watch_loud()
    await wait_event(loud, "speech at the subscriber")
    await feeder
    out.clear_buffer()
    t_clear = time.monotonic()
    await wait_event(got_finished, "interrupted playback finished", 5)
    assert finished[-1].interrupted is True
    assert finished[-1].playback_position < clip.duration - 0.5
    # the subscriber hears silence soon after; measured, bounded loosely (network jitter)
    settle = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(1.0, settle.set_result, None)
    await settle
    last_loud = max((t for t, v in rx.audio if v > 500), default=t_clear)
    (artifacts / f"room_interrupt_{publisher}.txt").write_text(
        f"last loud audio {1000 * (last_loud - t_clear):.0f} ms after clear_buffer\n"
    )
    assert last_loud - t_clear < 0.4
    await rx.aclose()
    return rx


async def test_in_process_avatar_publishes_lip_synced_tracks(
    livekit_server: object, rooms: tuple[rtc.Room, rtc.Room, str], speech_clip: SpeechClip,
    avatar_artifacts: Path,
) -> None:
    agent, user, name = rooms
    await agent.connect(livekit_server.url,  # type: ignore[attr-defined]
                        token(livekit_server, "agent", name, agent=True))
    session: AgentSession[None] = AgentSession()  # no models: the test drives its audio output directly
    avatar = LocalAvatarSession(options=LocalAvatarOptions(seed=3))
    try:
        await exercise(avatar, session, agent, user, name, livekit_server, "agent",
                       speech_clip, avatar_artifacts)
    finally:
        await avatar.aclose()


async def test_avatar_participant_publishes_on_behalf_of_the_agent(
    livekit_server: object, rooms: tuple[rtc.Room, rtc.Room, str], speech_clip: SpeechClip,
    avatar_artifacts: Path,
) -> None:
    agent, user, name = rooms
    srv = livekit_server
    await agent.connect(srv.url, token(srv, "agent", name, agent=True))  # type: ignore[attr-defined]
    session: AgentSession[None] = AgentSession()
    avatar = LocalAvatarSession(
        options=LocalAvatarOptions(mode="participant", seed=3),
        livekit_url=srv.url, api_key=srv.api_key, api_secret=srv.api_secret,  # type: ignore[attr-defined]
    )
    try:
        rx = await exercise(avatar, session, agent, user, name, srv, "local-avatar",
                            speech_clip, avatar_artifacts)
        assert rx.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) == "agent"
    finally:
        await avatar.aclose()
