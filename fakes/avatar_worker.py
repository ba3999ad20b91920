"""What a hosted avatar vendor's worker does once given a LiveKit token: join and play the agent.

It joins the room with the token the agent minted (``lk.publish_on_behalf`` names the agent),
receives the agent's speech through ``DataStreamAudioReceiver`` (byte streams on
``lk.audio_stream``) and publishes audio and video through ``AvatarRunner``. The face is a
synthetic one (a gray frame that brightens with the voice), enough to prove the wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import numpy as np
from livekit import rtc
from livekit.agents.utils.audio import AudioByteStream
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioReceiver,
    VideoGenerator,
)
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

logger = logging.getLogger(__name__)


class PulseVideoGenerator(VideoGenerator):
    """Idle frames while silent; while speaking, one audio chunk per frame and a brighter face."""

    def __init__(self, *, width: int, height: int, fps: int, sample_rate: int) -> None:
        self._width, self._height, self._fps = width, height, fps
        self._sample_rate = sample_rate
        self._samples_per_frame = sample_rate // fps
        self._queue: asyncio.Queue[rtc.AudioFrame | AudioSegmentEnd] = asyncio.Queue()
        self._bstream = AudioByteStream(sample_rate, 1, samples_per_channel=self._samples_per_frame)
        self._resampler: rtc.AudioResampler | None = None
        self.audio_frames_in = 0
        self.audio_started = asyncio.Event()  # the agent's speech reached the avatar
        self._frames_by_shade: dict[int, rtc.VideoFrame] = {}

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            for chunk in self._bstream.flush():
                self._queue.put_nowait(chunk)
            self._queue.put_nowait(frame)
            return
        self.audio_frames_in += 1
        self.audio_started.set()
        frames = [frame]
        if frame.sample_rate != self._sample_rate:
            if self._resampler is None:
                self._resampler = rtc.AudioResampler(frame.sample_rate, self._sample_rate)
            frames = self._resampler.push(frame)
        for f in frames:
            for chunk in self._bstream.write(f.data.tobytes()):
                self._queue.put_nowait(chunk)

    def clear_buffer(self) -> None:
        self._bstream.clear()
        while not self._queue.empty():
            self._queue.get_nowait()

    def _face(self, level: float) -> rtc.VideoFrame:
        # 16 shades, each frame made once: many fake avatars in one process stay cheap
        shade = int(60 + 180 * round(min(1.0, level) * 15) / 15)
        frame = self._frames_by_shade.get(shade)
        if frame is None:
            data = np.full((self._height, self._width, 4), shade, dtype=np.uint8)
            data[..., 3] = 255
            frame = rtc.VideoFrame(self._width, self._height, rtc.VideoBufferType.RGBA,
                                   data.tobytes())
            self._frames_by_shade[shade] = frame
        return frame

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        idle = self._face(0.0)
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                yield idle  # the synchronizer paces this to the frame rate
                continue
            if isinstance(item, AudioSegmentEnd):
                yield item
                continue
            samples = np.frombuffer(item.data, dtype=np.int16)  # mono: one chunk per frame
            level = float(np.abs(samples).mean()) / 8000.0 if len(samples) else 0.0
            yield self._face(level)
            yield item


class FullRateAvatarRunner(AvatarRunner):
    """LiveKit's runner, publishing its video at the frame rate asked for.

    ``AvatarRunner`` publishes with the SDK's default encoding, which caps small videos at
    15 fps (LiveKit's presets below 360p); a vendor's avatar sends its full rate.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts: AvatarOptions = kwargs["options"]
        self._encoding = rtc.VideoEncoding(
            max_bitrate=max(150_000, int(opts.video_width * opts.video_height * opts.video_fps / 4)),
            max_framerate=opts.video_fps)

    async def _publish_track(self) -> None:  # LiveKit's, with the video encoding set
        async with self._lock:
            await self._room_connected_fut
            audio = rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio_source)
            self._audio_publication = await self._room.local_participant.publish_track(
                audio, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            await self._audio_publication.wait_for_subscription()
            video = rtc.LocalVideoTrack.create_video_track("avatar_video", self._video_source)
            self._video_publication = await self._room.local_participant.publish_track(
                video, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA,
                                               video_encoding=self._encoding))


@dataclass
class FakeAvatarWorker:
    """One avatar participant in one room; ``stop()`` leaves the room.

    ``leave()`` plays a worker that dies mid-session: it drops out of the room first, so no
    playback-finished message for the speech it holds ever reaches the agent.
    """

    url: str
    token: str
    width: int = 320
    height: int = 240
    fps: int = 15
    sample_rate: int = 24000
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    generator: PulseVideoGenerator | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _abrupt: bool = False
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def leave(self) -> None:
        """Disconnect without finishing or reporting anything (a crashed vendor worker)."""
        self._abrupt = True
        await self.stop()

    async def _run(self) -> None:
        claims = jwt.decode(self.token, options={"verify_signature": False})
        agent_identity = (claims.get("attributes") or {}).get(ATTRIBUTE_PUBLISH_ON_BEHALF)
        room = rtc.Room()
        runner: AvatarRunner | None = None
        try:
            await room.connect(self.url, self.token)
            self.generator = PulseVideoGenerator(
                width=self.width, height=self.height, fps=self.fps, sample_rate=self.sample_rate
            )
            runner = FullRateAvatarRunner(
                room,
                audio_recv=DataStreamAudioReceiver(room, sender_identity=agent_identity),
                video_gen=self.generator,
                options=AvatarOptions(
                    video_width=self.width,
                    video_height=self.height,
                    video_fps=self.fps,
                    audio_sample_rate=self.sample_rate,
                    audio_channels=1,
                ),
            )
            await runner.start()
            self.joined.set()
            await self._stop.wait()
        except Exception as err:  # surfaced to the test through .error
            self.error = err
            logger.exception("fake avatar worker failed")
        finally:
            if self._abrupt:
                await room.disconnect()
            if runner is not None:
                await runner.aclose()
            await room.disconnect()
