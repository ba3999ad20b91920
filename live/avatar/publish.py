"""AvatarRunner with explicit video encoding and video paced by the audio's own clock.

LiveKit's runner publishes the video with default options: simulcast layers sized by preset,
whose frame rate and bitrate do not follow the avatar's. A talking face needs its full frame
rate (lips) more than spatial layers, so it is published as one layer at the configured fps.

LiveKit's ``rtc.AVSynchronizer`` sends audio through the audio source's queue (played out in
real time) and video through its own frame-rate clock; the two clocks drift apart as soon as
rendering stalls or a reply starts on a part-filled queue, and the measured offset at the
receiver wandered from the mouth 80 ms early to 400 ms late within one call.
``AudioClockSynchronizer`` sends each speaking frame when its own audio chunk starts to play
out (the audio queue's end when the chunk was queued), ``lead`` seconds early, so a stall
delays sound and mouth together. Both tracks are published as one stream, so receivers
(libwebrtc in browsers and SDKs) sync the frames to the sound from their timestamps rather
than showing each as soon as it arrives: their audio jitter buffer no longer moves the lips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner

from live.lk_compat import (
    publish_runner_tracks,
    replace_runner_synchronizer,
    rewind_runner_playback,
    runner_audio_receiver,
    runner_media_sources,
    runner_queue_kwargs,
)

logger = logging.getLogger(__name__)

# bits per pixel per frame: enough for a mostly static face with a moving mouth
BITS_PER_PIXEL = 0.2
# How much earlier than its sound a frame leaves (negative: later). Frames are stamped when
# they leave and the receiver plays them against the sound's clock (AV_STREAM), so this is
# the lead viewers see, give or take the mouth's smoothing: with 0 the caller measured the
# lips about 10 ms ahead of the sound, as people's are (bench.call, lip offset per turn).
DEFAULT_VIDEO_LEAD_S = 0.0
AUDIO_QUEUE_MS = 100
# Audio and video published as one stream (one msid): receivers put the two tracks in one
# sync group and play the frames against the sound's clock (RTCP sender reports).
AV_STREAM = "avatar"


def video_encoding(options: AvatarOptions) -> rtc.VideoEncoding:
    bitrate = int(options.video_width * options.video_height * options.video_fps * BITS_PER_PIXEL)
    return rtc.VideoEncoding(max_bitrate=max(300_000, bitrate), max_framerate=options.video_fps)


class AudioClockSynchronizer:
    """Drop-in for ``rtc.AVSynchronizer``: video frames follow the audio they go with.

    The generator pushes a frame and then, while speaking, that frame's audio chunk. A frame
    is held until the next push tells which it is: followed by audio, it is due when that
    audio starts to play (minus ``lead``); an idle frame is due at once, after the frames
    before it. A task captures frames at their due times.
    """

    def __init__(self, *, audio_source: rtc.AudioSource, video_source: rtc.VideoSource,
                 lead: float = DEFAULT_VIDEO_LEAD_S, queue_ms: int = AUDIO_QUEUE_MS) -> None:
        self._audio = audio_source
        self._queue_s = queue_ms / 1000.0
        self._video = video_source
        self.lead = lead
        self._held: rtc.VideoFrame | None = None
        self.last_audio_start = 0.0  # monotonic time the last chunk pushed starts playing
        self.cleared = asyncio.Event()  # set by clear_queue (wakes a delayed notification)
        self._due: deque[tuple[float, rtc.VideoFrame]] = deque()
        self._wake = asyncio.Event()
        self._audio_end = 0.0  # monotonic time the audio queued so far ends playing
        self._last_due = 0.0
        self._closed = False
        self._queued: deque[tuple[float, rtc.AudioFrame]] = deque()  # (start, chunk) not played
        self._in_flight: rtc.AudioFrame | None = None  # waiting for room in the source's queue
        self._epoch = 0  # take_back calls so far
        self.on_take_back: Callable[[float], None] | None = None  # seconds given back
        self._task = asyncio.create_task(self._capture_video(), name="avatar-video-pacing")

    async def push(self, frame: rtc.VideoFrame | rtc.AudioFrame,
                   timestamp: float | None = None) -> None:
        now = time.monotonic()
        if isinstance(frame, rtc.AudioFrame):
            held, self._held = self._held, None  # this chunk's frame: not idle
            epoch, self._in_flight = self._epoch, frame
            try:
                await self._audio.capture_frame(frame)
            finally:
                self._in_flight = None
            if epoch != self._epoch:
                # taken back while it waited for room: its sound is in what was given back
                self._audio.clear_queue()
                self._audio_end = time.monotonic()
                return
            # The source takes a chunk once its queue has room: the chunk then starts after
            # at most the queue less itself. When the source plays out slower than real time
            # (a loaded machine) that bound, not the running sum, says when.
            done = time.monotonic()
            start = max(now, self._audio_end)
            start = max(done, min(start, done + self._queue_s - frame.duration))
            self._audio_end = start + frame.duration
            self.last_audio_start = start
            while self._queued and self._queued[0][0] + self._queued[0][1].duration <= now:
                self._queued.popleft()  # played out
            self._queued.append((start, frame))
            if held is not None:
                self._schedule(held, start - self.lead)
            return
        if self._held is not None:  # the frame before had no audio: idle, show it now
            self._schedule(self._held, now)
        self._held = frame

    def _schedule(self, frame: rtc.VideoFrame, due: float) -> None:
        due = max(due, self._last_due)
        self._last_due = due
        self._due.append((due, frame))
        self._wake.set()

    @property
    def dry_s(self) -> float:
        """How long the source has had nothing to play (the listener hears silence)."""
        return max(0.0, time.monotonic() - self._audio_end) if self._audio_end else 0.0

    async def clear_queue(self) -> None:
        """Interruption: queued sound and not-yet-shown frames go."""
        self.cleared.set()
        self._audio.clear_queue()
        self._audio_end = time.monotonic()
        self._due.clear()
        self._queued.clear()
        self._held = None
        self._last_due = 0.0

    def take_back(self) -> npt.NDArray[np.int16]:
        """Stop the sound at once: empty the source's queue and return what has not played
        (mono int16, in order). Frames due with that sound are dropped too: the generator
        renders them again when it goes on."""
        now = time.monotonic()
        self._epoch += 1
        parts: list[npt.NDArray[np.int16]] = []
        for start, frame in self._queued:
            if start + frame.duration <= now:
                continue
            data = np.frombuffer(frame.data, np.int16)
            if start < now:  # playing now: what is left of it, to the 10 ms the source plays by
                step = frame.sample_rate // 100
                data = data[int((now - start) * 100) * step:]
            parts.append(data)
        if self._in_flight is not None:
            parts.append(np.frombuffer(self._in_flight.data, np.int16))
        self._queued.clear()
        self._audio.clear_queue()
        self._audio_end = now
        self._held = None
        while self._due and self._due[-1][0] > now:
            self._due.pop()
        self._last_due = self._due[-1][0] if self._due else 0.0
        back = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        if back.size and self.on_take_back is not None:
            self.on_take_back(back.size / self._audio.sample_rate)
        return back

    async def wait_for_playout(self) -> None:
        await self._audio.wait_for_playout()

    def reset(self) -> None:
        self._last_due = 0.0

    async def _capture_video(self) -> None:
        while not self._closed:
            if not self._due:
                self._wake.clear()
                if self._held is not None:
                    # nothing queued: a held frame is shown if no audio claims it in time
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.03)
                    if not self._due and self._held is not None:
                        self._schedule(self._held, time.monotonic())
                        self._held = None
                    continue
                await self._wake.wait()
                continue
            due, frame = self._due[0]
            wait = due - time.monotonic()
            if wait > 0.002:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue  # a clear may have emptied the queue meanwhile
            self._due.popleft()
            self._video.capture_frame(frame)

    async def aclose(self) -> None:
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class FaceAvatarRunner(AvatarRunner):
    """Publishes audio as LiveKit's runner does, and video as one layer at the avatar's fps,
    each frame paced by the audio it shows (``AudioClockSynchronizer``)."""

    def __init__(self, room: rtc.Room, *, options: AvatarOptions,
                 video_lead: float = DEFAULT_VIDEO_LEAD_S, **kwargs: object) -> None:
        super().__init__(room, options=options, **runner_queue_kwargs(AUDIO_QUEUE_MS),
                         **kwargs)  # type: ignore[arg-type]
        self._face_options = options
        audio_source, video_source = runner_media_sources(self)
        self._clock_sync = AudioClockSynchronizer(
            audio_source=audio_source, video_source=video_source, lead=video_lead,
            queue_ms=AUDIO_QUEUE_MS,
        )
        replace_runner_synchronizer(self, self._clock_sync)  # before anything was pushed
        # sound given back on a pause is pushed again on resume: count it once
        self._clock_sync.on_take_back = lambda seconds: rewind_runner_playback(self, seconds)
        # "playback started" when the first chunk leaves, not when it is queued: the agent
        # times word-by-word captions (and the reply kept on interruption) from it
        recv = runner_audio_receiver(self)
        notify = recv.notify_playback_started
        sync = self._clock_sync

        def notify_when_playing() -> Coroutine[None, None, None]:
            async def later() -> None:
                sync.cleared.clear()
                wait = sync.last_audio_start - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sync.cleared.wait(), wait)
                logger.debug("reply audio playing")  # the worker log's mark for latency traces
                result = notify()
                if asyncio.iscoroutine(result):
                    await result

            return later()

        recv.notify_playback_started = notify_when_playing  # type: ignore[method-assign]

    async def _publish_track(self) -> None:  # LiveKit's hook: see lk_compat
        await publish_runner_tracks(
            self,
            audio_options=rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_MICROPHONE, stream=AV_STREAM
            ),
            video_options=rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                stream=AV_STREAM,
                simulcast=False,
                video_encoding=video_encoding(self._face_options),
            ),
        )
