"""The avatar's ``VideoGenerator``: TTS audio in, paced face frames plus audio chunks out.

One audio chunk of ``sample_rate // fps`` samples goes out with every speaking frame, so
``AVSynchronizer`` keeps lips and sound together. With no audio queued the generator emits
idle frames at the frame rate (blinks, slight head motion, mouth at rest), so the video
never stalls. ``clear_buffer`` drops everything queued, empties the synchronizer's queues and
closes the mouth within two frames.

Phoneme timings (``alignment_callback``) are matched to audio by duration in the order they
arrive: the TTS announces a chunk's timings just before pushing that chunk's audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator

from engines.threads import set_os_thread_name
from live.alignment import PhonemeTiming
from live.avatar.face import FaceRenderer, FaceState
from live.avatar.visemes import (
    CLOSED,
    AudioMouthEstimator,
    MouthShape,
    MouthSmoother,
    VisemeSpan,
    shape_over,
    timings_to_spans,
)

logger = logging.getLogger(__name__)


class _Clearable(Protocol):
    """The synchronizer's part the generator uses (``rtc.AVSynchronizer`` or ours)."""

    async def clear_queue(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What the generator just emitted; for tests, benchmarks and metering."""

    index: int  # video frame number since start
    media_time: float  # index / fps
    speaking: bool
    mouth: MouthShape
    audio_rms: float  # RMS of the frame's audio chunk (int16 units), 0 when idle
    render_ms: float


class BlinkScheduler:
    """Natural blinks: every 3-6 s, ~200 ms each, now and then a double blink."""

    _CURVE = (0.45, 0.9, 1.0, 0.7, 0.35, 0.1)  # eyelid closure per 40 ms step

    def __init__(self, rng: random.Random, *, min_s: float = 3.0, max_s: float = 6.0) -> None:
        self._rng = rng
        self._min, self._max = min_s, max_s
        self._next = rng.uniform(1.0, max_s)
        self._start: float | None = None
        self.blinks = 0

    def value(self, t: float) -> float:
        if self._start is None and t >= self._next:
            self._start = t
            self.blinks += 1
        if self._start is None:
            return 0.0
        k = (t - self._start) / 0.04
        if k >= len(self._CURVE) - 1:
            self._start = None
            double = self._rng.random() < 0.12
            self._next = t + (0.25 if double else self._rng.uniform(self._min, self._max))
            return 0.0
        i = int(k)
        frac = k - i
        return self._CURVE[i] * (1 - frac) + self._CURVE[i + 1] * frac


class HeadMotion:
    """Slow idle sway (sum of incommensurate sines) plus a small nod with speech energy."""

    def __init__(self, rng: random.Random, *, amplitude_px: float) -> None:
        self._ph = [rng.uniform(0, 2 * math.pi) for _ in range(6)]
        self._a = amplitude_px
        self._nod = 0.0

    def value(self, t: float, energy: float) -> tuple[float, float, float]:
        p = self._ph
        self._nod += (energy - self._nod) * 0.15
        dx = self._a * (0.6 * math.sin(0.31 * t + p[0]) + 0.4 * math.sin(0.83 * t + p[1]))
        dy = self._a * (0.35 * math.sin(0.47 * t + p[2]) + 0.25 * math.sin(1.13 * t + p[3]))
        dy += 0.5 * self._a * self._nod
        ang = 0.006 * (0.7 * math.sin(0.23 * t + p[4]) + 0.3 * math.sin(0.71 * t + p[5]))
        return dx, dy, ang


class FaceVideoGenerator(VideoGenerator):
    """Drives a ``FaceRenderer`` from audio (and optional phoneme timings)."""

    def __init__(
        self,
        *,
        renderer: FaceRenderer,
        options: AvatarOptions,
        seed: int | None = None,
        frame_listener: Callable[[FrameInfo], None] | None = None,
        render_in_thread: bool = True,
        mouth_delay: float = 0.0,
    ) -> None:
        if options.audio_channels != 1:
            raise ValueError("the local avatar publishes mono audio")
        self._renderer = renderer
        self._opts = options
        self._sr = options.audio_sample_rate
        self._fps = float(options.video_fps)
        self._spf = int(self._sr // self._fps)  # samples per video frame
        self._listener = frame_listener
        self._queue: asyncio.Queue[npt.NDArray[np.int16] | AudioSegmentEnd] = asyncio.Queue()
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._buf = np.zeros(0, np.int16)
        self._pushed = 0  # output-rate samples queued since the last clear
        self._played = 0  # output-rate samples emitted since the last clear
        self._seg_pushed = 0  # samples pushed in the current segment (for padding)
        self._spans: deque[VisemeSpan] = deque()
        self._pending_align: deque[tuple[list[PhonemeTiming], float]] = deque()
        self._align_lock = threading.Lock()
        self._head_align_left = 0.0  # seconds of audio still covered by the head entry
        self._head_align_offset = 0.0
        self._estimator = AudioMouthEstimator(sample_rate=self._sr)
        self._smoother = MouthSmoother(fps=self._fps)
        rng = random.Random(seed)
        self._blink = BlinkScheduler(rng)
        self._head = HeadMotion(rng, amplitude_px=renderer.height * 0.0025 + 0.4)
        self._closing_frames = 0
        self._frame_index = 0
        self._paused = False
        self._took_back = 0  # pauses that took sound back from the synchronizer
        # a reply's audio is out and its end not yet: the runner has not reported it played
        self._segment_open = False
        # Silence the caller hears inside a reply, by cause (for the traces, "reply played"
        # in the log): the publisher ran dry before the next chunk came, which the generator
        # either did not have (starved: the voice, or the LLM behind it, was late) or had
        # and was late with (late: drawing, or a busy event loop).
        self._segment_frames = 0
        self._segment_chunks = 0
        self._starved_s = 0.0
        self._late_s = 0.0
        self._in_speech = False  # the last thing out was a chunk of speech
        self._after_pause = False  # the next chunk's wait was a pause, not a gap
        self.on_gap: Callable[[float], None] | None = None
        """Called with the seconds of silence the listener heard inside a reply before a
        chunk (not a pause): the captions wait as long (``live.lk_compat.delay_captions``)."""
        self._resumed = asyncio.Event()
        # Frames that the mouth trails the audio it was computed from. 0: each frame shows its
        # own chunk; the publisher (live.avatar.publish) sends the frame when that chunk
        # plays, a little early, which is where the sync is made.
        self.mouth_delay_frames = max(0, round(mouth_delay * self._fps))
        self._delayed: deque[MouthShape] = deque()
        self._av_sync: _Clearable | None = None
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="avatar-render", initializer=set_os_thread_name,
            initargs=("avatar-render",)) if render_in_thread else None

    # ---- wiring -------------------------------------------------------------------

    def set_av_sync(self, av_sync: _Clearable | None) -> None:
        """Let ``clear_buffer`` flush the synchronizer's queues (audio stops at once)."""
        self._av_sync = av_sync

    @property
    def blinks(self) -> int:
        return self._blink.blinks

    def alignment_callback(
        self, timings: list[PhonemeTiming], num_samples: int, sample_rate: int
    ) -> None:
        """``live.alignment.AlignmentCallback``: timings for the next ``num_samples`` pushed."""
        if num_samples <= 0 or sample_rate <= 0:
            return
        with self._align_lock:
            self._pending_align.append((list(timings), num_samples / sample_rate))

    # ---- VideoGenerator -----------------------------------------------------------

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            if self._resampler is not None:
                for f in self._resampler.flush():
                    self._enqueue(self._samples(f))
            pad = (-self._seg_pushed) % self._spf
            if pad and self._seg_pushed:
                self._enqueue(np.zeros(pad, np.int16))
            self._seg_pushed = 0
            with self._align_lock:  # the segment's audio is complete: drop its leftover
                if self._head_align_left > 0:
                    self._head_align_left = 0.0
            self._queue.put_nowait(frame)
            return
        self._attach_alignment(frame.samples_per_channel / frame.sample_rate)
        if frame.sample_rate != self._sr or frame.num_channels != 1:
            if self._resampler is None or self._resampler_rate != frame.sample_rate:
                self._resampler = rtc.AudioResampler(
                    input_rate=frame.sample_rate, output_rate=self._sr, num_channels=1
                )
                self._resampler_rate = frame.sample_rate
            mono = frame if frame.num_channels == 1 else _downmix(frame)
            for f in self._resampler.push(mono):
                self._enqueue(self._samples(f))
        else:
            self._enqueue(self._samples(frame))

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def holding_audio(self) -> bool:
        """Audio queued and not yet played (what a resume would go on with)."""
        return self._buf.size > 0 or not self._queue.empty()

    def pause(self) -> None:
        """Hold the speech where it is (the caller may be interrupting): the face goes idle
        and the mouth closes. Sound already handed to the publisher but not played comes
        back (a synchronizer with ``take_back``), else it plays out (at most the queue,
        ``live.avatar.publish.AUDIO_QUEUE_MS``). ``resume`` goes on from here."""
        if not self._paused:
            self._paused = True
            self._after_pause = True
            self._resumed.clear()
            self._closing_frames = 2
            take_back = getattr(self._av_sync, "take_back", None)
            # after the reply's end the runner has told the agent it played: nothing would
            # resume a tail taken back now, so the last of the queue plays out
            if take_back is not None and self._segment_open:
                back: npt.NDArray[np.int16] = take_back()
                self._took_back += 1
                if pad := (-back.size) % self._spf:
                    # part of a chunk had played: whole chunks keep frames and sound paired
                    back = np.concatenate([np.zeros(pad, np.int16), back])
                if back.size:
                    self._buf = np.concatenate([back, self._buf]) if self._buf.size else back
                    self._played = max(0, self._played - back.size)
                    self._delayed.clear()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resumed.set()

    def clear_buffer(self) -> asyncio.Future[None] | None:  # type: ignore[override]
        """Drop queued audio and timings; close the mouth; flush the synchronizer."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._buf = np.zeros(0, np.int16)
        self._pushed = self._played = self._seg_pushed = 0
        self._segment_open = False
        self._spans.clear()
        self._delayed.clear()
        with self._align_lock:
            self._pending_align.clear()
            self._head_align_left = 0.0
        self._resampler = None
        self._closing_frames = 2
        self._log_segment()  # an interrupted reply: what it played of its gaps
        self.resume()  # the held speech is gone; the session pauses the next one if need be
        if (take_back := getattr(self._av_sync, "take_back", None)) is not None:
            # now, not in the task below: the runner reports the playback position (the words
            # the reply keeps) as soon as this returns, and sound dropped unplayed is no part
            take_back()
        if self._av_sync is not None:
            return asyncio.ensure_future(self._av_sync.clear_queue())
        return None

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._stream()

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- internals ----------------------------------------------------------------

    @staticmethod
    def _samples(frame: rtc.AudioFrame) -> npt.NDArray[np.int16]:
        return np.frombuffer(frame.data, dtype=np.int16).copy()

    def _enqueue(self, samples: npt.NDArray[np.int16]) -> None:
        if samples.size == 0:
            return
        self._pushed += samples.size
        self._seg_pushed += samples.size
        self._queue.put_nowait(samples)

    def _attach_alignment(self, seconds: float) -> None:
        """Map this frame's audio time onto pending phoneme timings (in arrival order)."""
        pos = self._pushed / self._sr  # where this frame starts on the audio clock
        left = seconds
        with self._align_lock:
            while left > 1e-9:
                if self._head_align_left <= 1e-9:
                    if not self._pending_align:
                        return
                    timings, dur = self._pending_align.popleft()
                    self._head_align_left = dur
                    # the chunk's time 0 sits at the current audio position
                    self._spans.extend(timings_to_spans(timings, pos + (seconds - left)))
                take = min(left, self._head_align_left)
                self._head_align_left -= take
                left -= take

    def _mouth_target(self, chunk: npt.NDArray[np.int16]) -> MouthShape:
        t0 = self._played / self._sr
        t1 = t0 + chunk.size / self._sr
        while self._spans and self._spans[0].end <= t0 - 0.2:
            self._spans.popleft()
        level = self._estimator.level(chunk)
        if self._spans:
            shape = shape_over(list(self._spans), t0, t1)
            if shape is not None:
                # timings say which shape, loudness says how far: keeps pauses shut
                k = 0.35 + 0.65 * level if level > 0 else 0.0
                return MouthShape(shape.open * k, shape.wide, shape.round)
        return self._estimator.estimate(chunk, level=level)

    def _frame_state(self, mouth: MouthShape, energy: float) -> FaceState:
        t = self._frame_index / self._fps
        b = self._blink.value(t)
        dx, dy, ang = self._head.value(t, energy)
        return FaceState(mouth=mouth, blink_l=b, blink_r=b, head_dx=dx, head_dy=dy,
                         head_angle=ang)

    async def _render(self, state: FaceState) -> tuple[rtc.VideoFrame, float]:
        loop = asyncio.get_running_loop()
        t = loop.time()
        if self._executor is not None:
            rgba = await loop.run_in_executor(self._executor, self._renderer.render, state)
        else:
            rgba = self._renderer.render(state)
        ms = (loop.time() - t) * 1000.0
        vf = rtc.VideoFrame(
            self._renderer.width, self._renderer.height, rtc.VideoBufferType.RGBA, rgba.tobytes()
        )
        return vf, ms

    def _emit(self, speaking: bool, mouth: MouthShape, rms: float, ms: float) -> None:
        if self._listener is not None:
            self._listener(FrameInfo(self._frame_index, self._frame_index / self._fps,
                                     speaking, mouth, rms, ms))
        self._frame_index += 1

    def _log_segment(self) -> None:
        """A mark for the traces: where the reply's gaps came from (bench.turns.trace)."""
        if self._segment_frames:
            logger.debug("reply played", extra={
                "frames": self._segment_frames,
                "starved_s": round(self._starved_s, 3),
                "late_s": round(self._late_s, 3),
            })
        self._segment_frames = self._segment_chunks = 0
        self._starved_s = self._late_s = 0.0

    async def _idle_frame(self) -> rtc.VideoFrame:
        """Mouth at rest (after an interruption or a pause: shut within two frames)."""
        self._in_speech = False
        if self._closing_frames:
            self._closing_frames -= 1
            v = self._smoother.value
            mouth = v.scaled(0.35) if self._closing_frames else CLOSED
            self._smoother.value = mouth
        else:
            mouth = self._smoother.step(CLOSED)
            if mouth.open < 0.02:
                mouth = self._smoother.value = CLOSED
        vf, ms = await self._render(self._frame_state(mouth, 0.0))
        self._emit(False, mouth, 0.0, ms)
        return vf

    async def _stream(
        self,
    ) -> AsyncGenerator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd, None]:
        loop = asyncio.get_running_loop()
        frame_s = 1.0 / self._fps
        next_idle = loop.time()
        while True:
            if self._paused:
                # held: idle frames at the frame rate until resumed (or cleared and resumed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._resumed.wait(), max(0.0, next_idle - loop.time()))
                if not self._paused:
                    continue
                yield await self._idle_frame()
                next_idle = max(next_idle + frame_s, loop.time() - frame_s)
                continue
            if self._buf.size >= self._spf:
                chunk, self._buf = self._buf[: self._spf], self._buf[self._spf:]
                rest_size = self._buf.size
                took_back = self._took_back
                if self._closing_frames:
                    self._closing_frames = 0
                self._delayed.append(self._mouth_target(chunk))
                target = (self._delayed.popleft()
                          if len(self._delayed) > self.mouth_delay_frames else CLOSED)
                mouth = self._smoother.step(target)
                rms = float(np.sqrt(np.mean(chunk.astype(np.float32) ** 2)))
                energy = min(1.0, rms / 4000.0)
                vf, ms = await self._render(self._frame_state(mouth, energy))
                self._played += chunk.size
                self._segment_open = True
                self._emit(True, mouth, rms, ms)
                self._segment_frames += 1
                yield vf
                if self._took_back != took_back:
                    # paused meanwhile and the sound before this chunk came back: it goes
                    # after that sound (the frame was dropped with it)
                    head = self._buf.size - rest_size  # the sound given back
                    self._buf = np.concatenate([self._buf[:head], chunk, self._buf[head:]])
                    self._played = max(0, self._played - chunk.size)
                    continue
                dry = getattr(self._av_sync, "dry_s", None)
                if (self._segment_chunks and not self._after_pause
                        and isinstance(dry, float) and dry > 0.005):
                    if self._in_speech:
                        self._late_s += dry
                    else:
                        self._starved_s += dry
                    if self.on_gap is not None:
                        self.on_gap(dry)
                self._after_pause = False
                self._segment_chunks += 1
                yield rtc.AudioFrame(chunk.tobytes(), self._sr, 1, chunk.size)
                self._in_speech = True
                next_idle = loop.time() + frame_s
                continue

            try:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = next_idle - loop.time()
                    if timeout <= 0:
                        raise TimeoutError from None
                    item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                next_idle = max(next_idle + frame_s, loop.time() - frame_s)
                yield await self._idle_frame()
                continue
            if isinstance(item, AudioSegmentEnd):
                self._log_segment()
                self._buf = np.zeros(0, np.int16)  # padding made it whole; drop any rest
                self._delayed.clear()  # the segment's last few (usually silent) shapes
                self._segment_open = False
                yield item
                continue
            self._buf = np.concatenate([self._buf, item]) if self._buf.size else item


def _downmix(frame: rtc.AudioFrame) -> rtc.AudioFrame:
    data = np.frombuffer(frame.data, np.int16).reshape(-1, frame.num_channels)
    mono = data.mean(axis=1).astype(np.int16)
    return rtc.AudioFrame(mono.tobytes(), frame.sample_rate, 1, mono.size)
