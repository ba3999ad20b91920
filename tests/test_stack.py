"""The embedded stack: a real livekit-server that participants join with the project's tokens."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc

from config.settings import load_settings
from tasks.provisioning import mint_participant_token
from tests.conftest import LiveKitServer

pytestmark = pytest.mark.integration


async def test_participants_see_each_other(livekit_server: LiveKitServer) -> None:
    settings = load_settings(
        livekit={"url": livekit_server.url, "api_key": livekit_server.api_key,
                 "api_secret": livekit_server.api_secret},
        _env_file=None,
    )
    alice, bob = rtc.Room(), rtc.Room()
    bob_sees_track = asyncio.Event()
    bob_sees_alice = asyncio.Event()

    @bob.on("participant_connected")
    def _joined(p: rtc.RemoteParticipant) -> None:
        if p.identity == "alice":
            bob_sees_alice.set()

    @bob.on("track_subscribed")
    def _track(track: rtc.Track, _pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        if p.identity == "alice" and track.kind == rtc.TrackKind.KIND_AUDIO:
            bob_sees_track.set()

    await bob.connect(livekit_server.url, mint_participant_token(settings, room="stack", identity="bob"))
    await alice.connect(livekit_server.url, mint_participant_token(settings, room="stack", identity="alice"))
    source = rtc.AudioSource(48000, 1)
    await alice.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("mic", source),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
    )

    async def feed() -> None:
        frame = rtc.AudioFrame.create(48000, 1, 480)
        while True:
            await source.capture_frame(frame)

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.wait_for(bob_sees_alice.wait(), 15)
        await asyncio.wait_for(bob_sees_track.wait(), 20)  # media flowed over WebRTC
        assert "alice" in bob.remote_participants
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()


async def test_token_is_scoped_to_its_room(livekit_server: LiveKitServer) -> None:
    settings = load_settings(
        livekit={"url": livekit_server.url, "api_key": livekit_server.api_key,
                 "api_secret": livekit_server.api_secret},
        _env_file=None,
    )
    token = mint_participant_token(settings, room="room-a", identity="mallory")
    from livekit.api import TokenVerifier

    claims = TokenVerifier(livekit_server.api_key, livekit_server.api_secret).verify(token)
    assert claims.video is not None and claims.video.room == "room-a" and claims.video.room_join
