"""`avatar call`: a caller that proves the whole path, as a person in the room would see it.

It joins a room with the LiveKit rtc SDK (dispatching the agent itself unless told not to),
speaks WAV files or text synthesised on the spot, records the avatar's audio and video, and
measures each turn from the end of its own speech to the first reply audio and to the first
video frame whose mouth region moved away from the idle face.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from livekit import api, rtc
from pydantic import BaseModel

from config.session import SessionSpec
from config.settings import Settings
from engines.store import process_models

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FRAME_MS = 10
SPEECH_RMS = 300.0  # int16 RMS above which reply audio counts as speech
REPLY_SILENCE_S = 1.5  # a reply is over after this much silence
STOP_QUIET_S = 1.2  # the avatar counts as stopped after this much quiet
GAP_WINDOW_S = 4.0  # after speaking over the avatar, quiet in its sound is looked for this long
# Speaking over the answer stopped it if the avatar went quiet within this (the caller's own
# measure runs about 1.1 s for an immediate stop: VAD, clearing, SFU, its jitter buffer); later,
# the answer went on (or ended by itself: a gap between sentences on a busy machine).
STOPPED_WITHIN_S = 2.5
# a stop sooner than this after the caller's first sound was not caused by it (the agent
# needs LIMITS__INTERRUPTION_MIN_SPEECH of it, 0.2 s at least, plus the way there and back)
ANSWER_OVER_S = 0.15
VIDEO_KEEP_PX = 256  # recorded frames are scaled down to this size


class TurnResult(BaseModel):
    prompt: str
    reply_text: str = ""
    audio_latency_s: float | None = None
    video_latency_s: float | None = None
    # mouth minus sound (s), from cross-correlating the received audio envelope with the
    # mouth opening in the received frames: positive = the sound comes before the mouth
    lip_offset_s: float | None = None
    lip_sync_r: float | None = None  # correlation at that offset (how sure the figure is)
    # the caller's own jitter buffers over the reply (mean delay, ms): sound held longer
    # than frames shows the mouth early by the difference, whatever the sender does
    audio_jitter_buffer_ms: float | None = None
    video_jitter_buffer_ms: float | None = None
    reply_audio_s: float = 0.0
    # stretches of digital silence inside the reply (between its first and last loud frame),
    # at least DROPOUT_MIN_S each: the sender had no sound to send (a stalled voice or face;
    # also a pause between sentences while the LLM writes). Count and total seconds.
    reply_dropouts: int = 0
    reply_dropout_s: float = 0.0
    # wall-clock end of the caller's speech: lines it up with the worker's log timestamps
    spoke_end_unix: float | None = None
    # the agent's captions (lk.transcription) for this reply, and when their first and last
    # words arrived against the reply's first and last audio (negative: the word came first)
    caption_text: str = ""
    caption_start_lag_s: float | None = None
    caption_end_lag_s: float | None = None
    caption_chunks: int = 0  # pieces the captions arrived in (word by word: about one a word)
    video_frames: int = 0
    wav_path: str | None = None
    frame_paths: list[str] = []


class CaptionSegment(BaseModel):
    """One transcription segment as the room delivered it (topic ``lk.transcription``)."""

    segment_id: str
    speaker: str
    text: str = ""
    final: bool = False


class InterruptionResult(BaseModel):
    prompt: str
    reply_started: bool = False
    spoke_over: bool = False  # the answer still ran when the caller spoke
    stop_latency_s: float | None = None  # caller starts speaking over the avatar -> it stops
    # the longest quiet in the avatar's sound in the window (`gap_window_s`, 4 s by default)
    # after the caller spoke over it: a pause the agent resumed from (a backchannel) shows
    # here, and not as a stop
    gap_window_s: float = GAP_WINDOW_S
    longest_gap_s: float | None = None
    # the avatar's sound came back after its first quiet of STOP_QUIET_S (a paused reply going
    # on, or a new reply), seconds from the caller's first sound; None: quiet to the window's end
    resumed_s: float | None = None
    caption_text: str = ""  # the agent's captions for the interrupted reply
    caption_end_lag_s: float | None = None  # its last captioned word, against the sound's end
    heard_text: str = ""  # what the caller heard of it (transcribed), for comparison
    heard_wav: str | None = None  # that sound, kept when the call records


class CallResult(BaseModel):
    room: str
    session_id: str | None = None
    greeting_heard: bool = False
    turns: list[TurnResult] = []
    interruption: InterruptionResult | None = None
    captions: list[CaptionSegment] = []  # every lk.transcription segment, in order
    # joining to the agent's first audio (the job's start, as the caller waits for it)
    join_s: float | None = None
    # the avatar's video as received (every frame counts, kept or not): frames a second from
    # the first frame to the last, and the longest wait between two frames
    video_fps: float | None = None
    video_max_gap_s: float | None = None
    # frames the caller's WebRTC stack decoded a second over the turns (its own threads: not
    # slowed by this Python process, unlike the frames above)
    video_fps_decoded: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(t.audio_latency_s is not None for t in self.turns)

    def render(self) -> str:
        lines = [f"room {self.room}" + (f"  session {self.session_id}" if self.session_id else "")]
        for i, t in enumerate(self.turns, 1):
            a = f"{t.audio_latency_s * 1000:.0f} ms" if t.audio_latency_s is not None else "none"
            v = f"{t.video_latency_s * 1000:.0f} ms" if t.video_latency_s is not None else "none"
            lines.append(f"turn {i}: you said: {t.prompt!r}")
            lines.append(f"        avatar said: {t.reply_text!r}")
            lines.append(f"        first audio after your speech: {a}; first open mouth: {v}; "
                         f"reply {t.reply_audio_s:.1f} s ({t.reply_dropouts} dropouts, "
                         f"{t.reply_dropout_s:.2f} s), {t.video_frames} video frames")
            if t.caption_start_lag_s is not None and t.caption_end_lag_s is not None:
                lines.append(f"        captions: {t.caption_chunks} pieces, first word "
                             f"{t.caption_start_lag_s * 1000:+.0f} ms and last "
                             f"{t.caption_end_lag_s * 1000:+.0f} ms against the sound")
            if t.lip_offset_s is not None:
                lines.append(f"        lip sync: mouth {t.lip_offset_s * 1000:+.0f} ms after the sound "
                             f"(r {t.lip_sync_r:.2f}); jitter buffers here: audio "
                             f"{t.audio_jitter_buffer_ms} ms, video {t.video_jitter_buffer_ms} ms")
            if t.wav_path:
                lines.append(f"        recorded: {t.wav_path}")
        if self.interruption:
            it = self.interruption
            stop = f"{it.stop_latency_s * 1000:.0f} ms" if it.stop_latency_s is not None else "did not stop"
            lines.append(f"interruption: spoke over the answer to {it.prompt!r}; avatar stopped after {stop}")
            if it.longest_gap_s is not None:
                back = (f"{it.resumed_s * 1000:.0f} ms" if it.resumed_s is not None
                        else f"not within {it.gap_window_s:.0f} s")
                lines.append(f"        longest quiet {it.longest_gap_s * 1000:.0f} ms; its sound came back after {back}")
            lines.append(f"        heard: {it.heard_text!r}; captioned: {it.caption_text!r}")
            if it.heard_wav:
                lines.append(f"        recorded: {it.heard_wav}")
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)


@dataclass
class CallOptions:
    room: str | None
    utterances: list[str | Path]
    out_dir: Path
    dispatch: bool = True
    reply_timeout: float = 45.0
    # Ask this, then speak over the answer `interrupt_after` seconds into it.
    interrupt_prompt: str | Path | None = None
    interrupt_after: float = 1.0
    # text (said in the agent's voice) or a WAV file, e.g. a backchannel that must not stop it
    interrupt_with: str | Path = "Sorry, stop. Wait a moment please."
    # how long the caller listens after speaking over the answer (for its pauses, and whether
    # its sound comes back); the bench's figures are over the default
    gap_window: float = GAP_WINDOW_S
    identity: str = field(default_factory=lambda: f"caller-{uuid.uuid4().hex[:6]}")
    spec: SessionSpec | None = None
    greeting_timeout: float = 60.0
    # A light caller, for many in one process (bench.load): no Whisper on the replies, no
    # files written, video not subscribed at all or only one frame in `video_keep_every`
    # converted and kept (every frame is still counted for the frame rate).
    transcribe_replies: bool = True
    record: bool = True
    video: bool = True
    video_keep_every: int = 1


# ------------------------------------------------------------------------------ audio helpers


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    if src_rate == dst_rate:
        return pcm.astype(np.int16)
    n = round(len(pcm) * dst_rate / src_rate)
    x = np.linspace(0, len(pcm) - 1, n)
    return np.interp(x, np.arange(len(pcm)), pcm.astype(np.float32)).astype(np.int16)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM WAV")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        return resample(data, w.getframerate(), SAMPLE_RATE)


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype(np.int16).tobytes())


def _caller_voice() -> Any:
    """Whole-sentence Piper from the process's model store (the agent's voice, not streamed)."""
    from engines.piper import get_piper

    return get_piper(process_models(), "joe-us", stream_vocoder=False)


def _whisper() -> Any:
    """Whisper tiny.en from the process's model store (the engine the agent's STT uses)."""
    from engines.whisper import get_whisper

    return get_whisper(process_models(), "tiny.en")


def synthesize(text: str) -> np.ndarray:
    """Speak text with the local Piper voice (falls back to espeak-ng)."""
    try:
        voice = _caller_voice()
        chunks = [np.frombuffer(c.pcm, dtype=np.int16) for c in voice.synthesize_sync(text)]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return resample(pcm, voice.sample_rate, SAMPLE_RATE)
    except ModuleNotFoundError:
        import shutil
        import subprocess
        import tempfile

        if not shutil.which("espeak-ng"):
            raise RuntimeError(
                'no voice to speak with: pip install -e ".[local]" or apt-get install espeak-ng'
            ) from None
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["espeak-ng", "-w", f.name, text], check=True)
            return read_wav(Path(f.name))


def transcribe(pcm: np.ndarray, rate: int) -> str:
    """What was heard: the store's Whisper model, with faster-whisper's own decoding defaults
    (temperature fallback on a looping decode), not the live STT's short-window settings."""
    try:
        model = _whisper().model
    except ModuleNotFoundError:
        return ""
    audio = resample(pcm, rate, 16000).astype(np.float32) / 32768.0
    segments, _ = model.transcribe(audio, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments).strip()


# ------------------------------------------------------------------------------ the call


class _Recorder:
    """Collects the avatar's audio and video with arrival times."""

    def __init__(self, video_keep_every: int = 1) -> None:
        self.video_keep_every = max(1, video_keep_every)
        self.video_arrivals: list[float] = []  # every frame received, kept or not
        self.audio: list[tuple[float, np.ndarray]] = []
        # arrival times of the audio frames louder than SPEECH_RMS, in order: waiting for a
        # reply looks them up (bisect) instead of measuring every frame again at each poll
        self.loud: list[float] = []
        self.video: list[tuple[float, np.ndarray]] = []
        # when each kept frame is due on screen (libwebrtc's render time, same clock as
        # time.monotonic): unlike arrival, not delayed when this process is busy
        self.video_shown: list[float] = []
        self.audio_rate = SAMPLE_RATE
        self.keep_since = 0.0
        self.got_audio = asyncio.Event()
        self.got_video = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        # lk.transcription chunks: (arrival, segment id, speaker, text)
        self.caption_chunks: list[tuple[float, str, str, str]] = []
        self.caption_final: dict[str, bool] = {}
        self.caption_track: dict[str, str] = {}  # segment -> the track it transcribes
        self.own_tracks: set[str] = set()  # the caller's tracks: captions of its own speech

    async def read_captions(self, reader: rtc.TextStreamReader, speaker: str) -> None:
        attrs = reader.info.attributes or {}
        seg = attrs.get("lk.segment_id") or reader.info.stream_id
        self.caption_track[seg] = attrs.get("lk.transcribed_track_id", "")
        async for chunk in reader:
            self.caption_chunks.append((time.monotonic(), seg, speaker, chunk))
        final = attrs.get("lk.transcription_final") == "true"
        self.caption_final[seg] = self.caption_final.get(seg, False) or final

    def caption_segments(self) -> list[CaptionSegment]:
        segs: dict[str, CaptionSegment] = {}
        for _, seg, speaker, text in self.caption_chunks:
            cs = segs.setdefault(seg, CaptionSegment(segment_id=seg, speaker=speaker))
            cs.text += text
        for seg, cs in segs.items():
            cs.final = self.caption_final.get(seg, False)
        return list(segs.values())

    def agent_captions(self, since: float, until: float, caller: str
                       ) -> list[tuple[float, str, str]]:
        """(arrival, segment, text) of the agent's caption chunks in segments begun in the
        window: a reply's captions, and the rest of them when they run on past it."""
        def agent(seg: str, speaker: str) -> bool:
            return speaker != caller and self.caption_track.get(seg) not in self.own_tracks

        begun: dict[str, float] = {}
        for t, seg, speaker, _ in self.caption_chunks:
            if agent(seg, speaker):
                begun.setdefault(seg, t)
        return [(t, seg, text) for t, seg, speaker, text in self.caption_chunks
                if agent(seg, speaker) and since <= begun[seg] <= until]

    async def pump_audio(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for ev in stream:
            now = time.monotonic()
            pcm = np.frombuffer(ev.frame.data, dtype=np.int16).copy()
            self.audio.append((now, pcm))
            if pcm.size and float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) > SPEECH_RMS:
                self.loud.append(now)
            self.got_audio.set()

    async def pump_video(self, track: rtc.Track) -> None:
        import cv2

        every = self.video_keep_every
        # sampling: frames come as decoded, and only the kept ones are converted
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGB24 if every == 1 else None)
        async for ev in stream:
            self.video_arrivals.append(time.monotonic())
            if (len(self.video_arrivals) - 1) % every:
                continue
            f = ev.frame if every == 1 else ev.frame.convert(rtc.VideoBufferType.RGB24)
            img: np.ndarray = np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 3)
            scale = VIDEO_KEEP_PX / max(f.width, f.height)
            if scale < 1:  # keep memory bounded: frames are only scored and sampled
                img = cv2.resize(img, (round(f.width * scale), round(f.height * scale)),
                                 interpolation=cv2.INTER_AREA)
            now = time.monotonic()
            self.video.append((now, img.copy()))
            shown = ev.timestamp_us / 1e6
            self.video_shown.append(shown if abs(shown - now) < 1.0 else now)
            while self.video and self.video[0][0] < self.keep_since:
                self.video.pop(0)
                self.video_shown.pop(0)
            self.got_video.set()


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _change_score(img: np.ndarray, ref: np.ndarray) -> float:
    """Largest local change against the idle face: an opening mouth is a compact dark patch,
    while idle head sway and noise spread thin changes along edges."""
    import cv2

    h = img.shape[0]
    k = max(5, h // 24)
    # rows from just under the eyes to the chin of a head-and-shoulders framing: blinks
    # are local changes too, and must not count as speech
    band = slice(int(h * 0.3), int(h * 0.9))
    return float(cv2.blur(np.abs(_gray(img)[band] - ref[band]), (k, k)).max())


LIP_GRID_S = 0.005  # resolution of the lip-sync cross-correlation
LIP_LAGS_S = (-0.3, 0.6)  # mouth-minus-sound offsets searched
LIP_MIN_R = 0.2  # below this correlation the offset is not reported


def _audio_envelope(audio: list[tuple[float, np.ndarray]], t0: float, t1: float,
                    rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(times, loudness) in 10 ms blocks of the window, stamped when they play.

    The SDK hands remote audio over at its playout pace, without gaps; when this process
    is busy, frames wait in its queue and arrive late, in bursts, or a backlog builds up
    that lasts seconds. A frame plays at its arrival less the audio received since, at the
    least that any later frame shows (the backlog drains while the avatar is quiet); a
    frame the SDK dropped only moves that bound for the frames after it.
    """
    if not audio:
        return np.zeros(0), np.zeros(0)
    arrival = np.asarray([t for t, _ in audio])
    cum = np.concatenate([[0.0], np.cumsum([pcm.size for _, pcm in audio[:-1]])]) / rate
    anchor = np.minimum.accumulate((arrival - cum)[::-1])[::-1]
    block = rate // 100
    times: list[float] = []
    vals: list[float] = []
    for (t, pcm), a, c in zip(audio, anchor, cum, strict=True):
        if not (t0 <= t <= t1) or pcm.size == 0:
            continue
        for k in range(0, pcm.size, block):
            part = pcm[k:k + block].astype(np.float32)
            times.append(float(a + c + k / rate))
            vals.append(float(np.sqrt(np.sqrt(np.mean(part * part)))))  # compressed like a level
    return np.asarray(times), np.asarray(vals)


def _mouth_signal(frames: list[tuple[float, np.ndarray]], ref: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(times, mouth opening) per received frame.

    The mouth is found in the frames themselves: the compact patch in the lower face that
    changes most against the idle face over the turn. Its mean change is the opening.
    """
    import cv2

    if not frames:
        return np.zeros(0), np.zeros(0)
    grays = [_gray(img) for _, img in frames]
    h, w = ref.shape
    k = max(5, h // 10)
    change = np.mean([np.abs(g - ref) for g in grays], axis=0)
    change[: int(h * 0.3)] = 0.0  # eyes blink: not the mouth
    change[int(h * 0.95):] = 0.0
    y, x = np.unravel_index(int(np.argmax(cv2.blur(change, (k, k)))), change.shape)
    ys = slice(max(0, y - k // 2), min(h, y + k // 2 + 1))
    xs = slice(max(0, x - k), min(w, x + k + 1))  # mouths are wider than tall
    vals = [float(np.mean(np.abs(g[ys, xs] - ref[ys, xs]))) for g in grays]
    return np.asarray([t for t, _ in frames]), np.asarray(vals)


def lip_offset(audio: list[tuple[float, np.ndarray]], frames: list[tuple[float, np.ndarray]],
               ref: np.ndarray, start: float, end: float) -> tuple[float, float] | None:
    """Mouth-minus-sound offset (s) of one reply and the correlation there, or None.

    Both signals are put on one clock (when the caller plays the sound and shows the frame;
    a frame stays on screen until the next one), normalised, and cross-correlated over ``LIP_LAGS_S``; the peak is
    refined with a parabola. Positive: the sound comes before the mouth.
    """
    at, av = _audio_envelope(audio, start - 0.3, end + 0.3)
    vt, vv = _mouth_signal(frames, ref)
    if at.size < 50 or vt.size < 10 or float(np.std(vv)) == 0.0:
        return None
    grid = np.arange(start - 0.1, end + 0.1, LIP_GRID_S)
    a = np.interp(grid, at, av)
    a = (a - a.mean()) / (a.std() + 1e-9)
    lags = np.arange(LIP_LAGS_S[0], LIP_LAGS_S[1] + 1e-9, LIP_GRID_S)
    rs = np.empty(lags.size)
    for i, lag in enumerate(lags):
        idx = np.searchsorted(vt, grid + lag, side="right") - 1
        v = vv[np.clip(idx, 0, vt.size - 1)]
        sd = v.std()
        rs[i] = float(np.mean(a * (v - v.mean()) / sd)) if sd > 0 else -1.0
    i = int(np.argmax(rs))
    best = float(lags[i])
    if 0 < i < lags.size - 1:
        den = rs[i - 1] - 2 * rs[i] + rs[i + 1]
        if den < 0:
            best += 0.5 * LIP_GRID_S * float(rs[i - 1] - rs[i + 1]) / float(den)
    if rs[i] < LIP_MIN_R:
        return None
    return round(best, 3), round(float(rs[i]), 3)


async def _wait_until(pred: object, timeout: float, step: float = 0.02) -> bool:
    """Poll a condition with a deadline (the media arrives on other tasks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(step)
    return bool(pred())  # type: ignore[operator]


def _speech_after(rec: _Recorder, t0: float) -> float | None:
    i = bisect.bisect_left(rec.loud, t0)
    return rec.loud[i] if i < len(rec.loud) else None


def _last_speech(rec: _Recorder, t0: float) -> float | None:
    return rec.loud[-1] if rec.loud and rec.loud[-1] >= t0 else None


async def _wait_quiet(rec: _Recorder, since: float, timeout: float) -> float | None:
    """Wait for speech after `since` and then REPLY_SILENCE_S of quiet; returns speech start."""
    start: float | None = None

    def done() -> bool:
        nonlocal start
        start = start or _speech_after(rec, since)
        if start is None:
            return False
        last = _last_speech(rec, since) or start
        return time.monotonic() - last >= REPLY_SILENCE_S

    await _wait_until(done, timeout)
    return start


async def _wait_spoken(rec: _Recorder, since: float, caller: str, timeout: float
                       ) -> float | None:
    """Wait for the agent's speech begun after ``since`` (the greeting, a reply) to end;
    returns when it started to sound.

    Quiet alone is not enough: on a busy machine the agent's audio can stall longer than
    REPLY_SILENCE_S inside a greeting or a reply (a CI run heard "Here." of a longer answer
    and took the rest for the next turn). A caller who reads the captions also waits for the
    caption segments begun since ``since`` to close (the agent closes one when its playout
    ends), then for quiet again. Without captions the quiet rule stands alone. The stall
    stays in the figures: it is digital silence inside the reply (``dropouts``)."""
    deadline = time.monotonic() + timeout
    start = await _wait_quiet(rec, since, timeout)
    if start is None:
        return None

    def segments() -> set[str]:
        return {seg for _, seg, _ in rec.agent_captions(since, time.monotonic(), caller)}

    def closed() -> bool:
        return all(s in rec.caption_final and rec.caption_final[s] for s in segments())

    while not closed() and time.monotonic() < deadline:
        await _wait_until(closed, max(0.0, deadline - time.monotonic()))
        # the sound may still play out after its captions closed
        await _wait_quiet(rec, since, max(0.0, deadline - time.monotonic()))
    return start


DROPOUT_MIN_S = 0.03
DROPOUT_LEVEL = 2  # |sample| at most this: nothing was sent (a voice's quiet is never this)


def dropouts(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> tuple[int, float]:
    """Stretches of digital silence of at least DROPOUT_MIN_S between the first and last
    loud 10 ms of ``pcm``: (how many, total seconds)."""
    step = rate // 100
    n = pcm.size // step
    if n == 0:
        return 0, 0.0
    frames = pcm[: n * step].reshape(n, step).astype(np.int32)
    loud = np.sqrt(np.mean(frames.astype(np.float32) ** 2, axis=1)) > SPEECH_RMS
    if not loud.any():
        return 0, 0.0
    first, last = int(np.argmax(loud)), n - 1 - int(np.argmax(loud[::-1]))
    dead = np.abs(frames[first : last + 1]).max(axis=1) <= DROPOUT_LEVEL
    count, total, run = 0, 0, 0
    for d in [*dead.tolist(), False]:
        if d:
            run += 1
            continue
        if run * 0.01 >= DROPOUT_MIN_S - 1e-9:
            count += 1
            total += run
        run = 0
    return count, round(total * 0.01, 2)


def _stopped_at(rec: _Recorder, since: float, gap: float, loud_at_since: bool = False) -> float | None:
    """End of the agent's speech after `since`: the last loud frame before `gap` s of quiet."""
    last: float | None = since if loud_at_since else None
    for t, pcm in rec.audio:
        if t < since or not pcm.size:
            continue
        loud = float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) > SPEECH_RMS
        if loud:
            if last is not None and t - last >= gap:
                return last
            last = t
    if last is not None and time.monotonic() - last >= gap:
        return last
    return None


def _longest_gap(rec: _Recorder, since: float, until: float) -> float:
    """Longest run of quiet in the received sound between two times (s, 10 ms frames)."""
    longest, last = 0.0, since
    for t, pcm in rec.audio:
        if t < since or not pcm.size:
            continue
        if t > until:
            break
        if float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) > SPEECH_RMS:
            longest, last = max(longest, t - last), t
    return round(max(longest, min(until, time.monotonic()) - last), 3)


async def _jitter_buffers(room: rtc.Room) -> dict[str, tuple[float, int]]:
    """Received media's jitter buffer totals per kind: (delay summed in s, items emitted)."""
    out: dict[str, tuple[float, int]] = {}
    try:
        stats = await room.get_rtc_stats()
    except Exception:  # diagnostics only
        return out
    for st in [*stats.subscriber_stats, *stats.publisher_stats]:
        if st.WhichOneof("stats") == "inbound_rtp":
            inb = st.inbound_rtp
            out[str(inb.stream.kind).lower()] = (inb.inbound.jitter_buffer_delay,
                                                 inb.inbound.jitter_buffer_emitted_count)
    return out


async def _video_decoded(room: rtc.Room) -> int | None:
    """Video frames decoded so far by the caller's WebRTC stack (every subscribed track)."""
    try:
        stats = await room.get_rtc_stats()
    except Exception:  # diagnostics only
        return None
    total: int | None = None
    for st in [*stats.subscriber_stats, *stats.publisher_stats]:
        if st.WhichOneof("stats") == "inbound_rtp":
            inb = st.inbound_rtp
            if str(inb.stream.kind).lower() == "video":
                total = (total or 0) + inb.inbound.frames_decoded
    return total


def _jitter_ms(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]],
               kind: str) -> float | None:
    if kind not in before or kind not in after or after[kind][1] <= before[kind][1]:
        return None
    n = after[kind][1] - before[kind][1]
    return round(1000 * (after[kind][0] - before[kind][0]) / n, 1)


def _caption_turn(rec: _Recorder, turn: TurnResult, caller: str, t_end: float,
                  start: float, end: float) -> None:
    """The reply's captions and how they kept step with its sound."""
    chunks = rec.agent_captions(t_end, end + 0.5, caller)
    words = [(t, text) for t, _, text in chunks if text.strip()]
    turn.caption_text = "".join(text for _, _, text in chunks)
    turn.caption_chunks = len(words)
    if words:
        turn.caption_start_lag_s = round(words[0][0] - start, 3)
        turn.caption_end_lag_s = round(words[-1][0] - end, 3)


async def _interrupted_captions(rec: _Recorder, out: InterruptionResult, caller: str,
                                asked: float, over: float, stop: float | None) -> None:
    """Captions of the reply spoken over (once their segment has closed), and when its last
    word came against the moment the sound stopped."""
    def segments() -> set[str]:
        return {seg for _, seg, _ in rec.agent_captions(asked, over, caller)}

    await _wait_until(lambda: all(s in rec.caption_final for s in segments()), 5.0)
    chunks = rec.agent_captions(asked, over, caller)
    out.caption_text = "".join(text for _, _, text in chunks)
    words = [t for t, _, text in chunks if text.strip()]
    if words and stop is not None:
        out.caption_end_lag_s = round(words[-1] - stop, 3)


def _speech(what: str | Path) -> np.ndarray:
    return read_wav(what) if isinstance(what, Path) else synthesize(what)


def speech_onset(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Seconds of quiet before the speech in a clip (recordings start with room tone).

    The first 10 ms frame louder than a quarter of the clip's loudest frame (-12 dB) and than
    ``SPEECH_RMS``: above the room noise even in the corpus's 15 dB SNR items.
    """
    n = rate * FRAME_MS // 1000
    frames = pcm[: pcm.size // n * n].astype(np.float32).reshape(-1, n)
    if not frames.size:
        return 0.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > max(SPEECH_RMS, 0.25 * float(rms.max())))
    return float(loud[0] * n / rate) if loud.size else 0.0


async def _interrupt(
    rec: _Recorder, opts: CallOptions, speech_q: asyncio.Queue[np.ndarray], spoken: asyncio.Event,
    heard_wav: Path | None = None,
) -> InterruptionResult:
    assert opts.interrupt_prompt
    out = InterruptionResult(prompt=str(opts.interrupt_prompt), gap_window_s=opts.gap_window)
    spoken.clear()
    await speech_q.put(_speech(opts.interrupt_prompt))
    await asyncio.wait_for(spoken.wait(), timeout=30)
    asked = time.monotonic()
    if not await _wait_until(lambda: _speech_after(rec, asked) is not None, opts.reply_timeout):
        return out
    out.reply_started = True
    start = _speech_after(rec, asked) or asked
    await _wait_until(lambda: time.monotonic() >= start + opts.interrupt_after, opts.interrupt_after + 1)
    if _stopped_at(rec, start, STOP_QUIET_S) is not None:
        return out  # the answer was over before we could speak over it (a pause is not an end)
    pcm = _speech(opts.interrupt_with)
    spoken.clear()
    # timed from the caller's first sound, not from the clip's leading room tone
    over = time.monotonic() + speech_onset(pcm)
    await speech_q.put(pcm)
    out.spoke_over = True
    # a pause between two synthesized sentences is not a stop: require STOP_QUIET_S of quiet
    if await _wait_until(lambda: _stopped_at(rec, over, STOP_QUIET_S, loud_at_since=True) is not None, 15):
        stop = _stopped_at(rec, over, STOP_QUIET_S, loud_at_since=True)
        assert stop is not None
        out.stop_latency_s = round(max(0.0, stop - over), 3)
        if stop - over < ANSWER_OVER_S:
            # quiet before the caller's voice could have reached the agent: the answer had
            # ended (or paused between sentences and ended), nothing was spoken over
            out.spoke_over = False
    stopped = _stopped_at(rec, over, STOP_QUIET_S, loud_at_since=True)
    # the quiet is measured whole, not as far as it had gone when it first counted as a stop
    # (a pause for a backchannel that outlasts STOP_QUIET_S goes on, and may be resumed)
    end = over + opts.gap_window
    await _wait_until(lambda: time.monotonic() >= end + 0.1, opts.gap_window + 1)
    out.longest_gap_s = _longest_gap(rec, over, end)
    if stopped is not None and (back := _speech_after(rec, stopped + 0.02)) is not None \
            and back <= end:
        out.resumed_s = round(back - over, 3)
    await _interrupted_captions(rec, out, opts.identity, asked, over, stopped)
    heard = [pcm for t, pcm in rec.audio if start - 0.1 <= t <= (stopped or over) + 0.1]
    if heard:
        heard_pcm = np.concatenate(heard)
        if heard_wav is not None:
            write_wav(heard_wav, heard_pcm, SAMPLE_RATE)
            out.heard_wav = str(heard_wav)
        out.heard_text = await asyncio.to_thread(transcribe, heard_pcm, SAMPLE_RATE)
    return out


async def run_call(settings: Settings, opts: CallOptions) -> CallResult:
    room_name = opts.room or f"call-{uuid.uuid4().hex[:8]}"
    result = CallResult(room=room_name)
    process_models(settings)  # the caller's voice and ears load with this call's settings
    key = settings.livekit.api_key.get_secret_value()
    secret = settings.livekit.api_secret.get_secret_value()
    spec = opts.spec or SessionSpec()
    if opts.dispatch:
        async with api.LiveKitAPI(settings.livekit.http_url, key, secret) as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=room_name))
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(
                    agent_name=settings.livekit.agent_name,
                    room=room_name,
                    metadata=spec.model_dump_json(),
                )
            )
    token = (
        api.AccessToken(key, secret)
        .with_identity(opts.identity)
        .with_name("Caller")
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )
    rec = _Recorder(opts.video_keep_every)
    room = rtc.Room()

    @room.on("track_subscribed")
    def _on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            rec.tasks.append(asyncio.create_task(rec.pump_audio(track)))
        elif track.kind == rtc.TrackKind.KIND_VIDEO:
            if not opts.video:
                pub.set_subscribed(False)  # no decoding here: a light caller only listens
                return
            rec.tasks.append(asyncio.create_task(rec.pump_video(track)))

    def _on_captions(reader: rtc.TextStreamReader, speaker: str) -> None:
        rec.tasks.append(asyncio.create_task(rec.read_captions(reader, speaker)))

    room.register_text_stream_handler("lk.transcription", _on_captions)

    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=50)
    speech_q: asyncio.Queue[np.ndarray] = asyncio.Queue()
    spoken = asyncio.Event()
    samples_per = SAMPLE_RATE * FRAME_MS // 1000

    async def mic() -> None:
        """Continuous microphone: speech when queued, silence otherwise (so VAD sees the end)."""
        silence = np.zeros(samples_per, np.int16)
        current: np.ndarray | None = None
        pos = 0
        while True:
            if current is None and not speech_q.empty():
                current, pos = speech_q.get_nowait(), 0
            if current is not None:
                chunk = current[pos : pos + samples_per]
                pos += samples_per
                if chunk.size < samples_per:
                    chunk = np.pad(chunk, (0, samples_per - chunk.size))
                if pos >= current.size:
                    current = None
                    spoken.set()
            else:
                chunk = silence
            frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, samples_per)
            await source.capture_frame(frame)

    mic_task: asyncio.Task[None] | None = None
    try:
        await room.connect(settings.livekit.effective_url, token)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        mic_pub = await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        rec.own_tracks.add(mic_pub.sid)
        mic_task = asyncio.create_task(mic())
        joined = time.monotonic()
        if not await _wait_until(lambda: rec.got_audio.is_set(), opts.greeting_timeout):
            result.error = "the agent did not publish audio (is the live worker running?)"
            return result
        result.join_s = round(time.monotonic() - joined, 3)
        # let the greeting (if any) finish before the first question
        if spec.greeting:
            start = await _wait_spoken(rec, joined, opts.identity, opts.greeting_timeout)
            result.greeting_heard = start is not None
        idle_frames = [img for _, img in rec.video[-25:]]  # about a second of the idle face
        ref = np.median(np.stack([_gray(i) for i in idle_frames]), axis=0) if idle_frames else None
        idle_motion = [_change_score(b, _gray(a)) for a, b in itertools.pairwise(idle_frames)]
        # lips move fast; idle sway is slow: frame-to-frame change separates them
        threshold = max(6.0, 2.0 * float(np.percentile(idle_motion, 90))) if idle_motion else 6.0
        if opts.record:
            opts.out_dir.mkdir(parents=True, exist_ok=True)
        decoded_from = (time.monotonic(), await _video_decoded(room)) if opts.video else None
        for i, utt in enumerate(opts.utterances, 1):
            pcm = read_wav(utt) if isinstance(utt, Path) else synthesize(utt)
            prompt = str(utt)
            spoken.clear()
            rec.keep_since = time.monotonic()
            jb_before = await _jitter_buffers(room)
            await speech_q.put(pcm)
            await asyncio.wait_for(spoken.wait(), timeout=len(pcm) / SAMPLE_RATE + 10)
            t_end = time.monotonic() + 0.05  # the source's queue (50 ms) still plays out
            turn = TurnResult(prompt=prompt, spoke_end_unix=round(time.time() + 0.05, 3))
            start = await _wait_spoken(rec, t_end, opts.identity, opts.reply_timeout)
            if start is None:
                result.turns.append(turn)
                result.error = f"no reply to turn {i} within {opts.reply_timeout:.0f}s"
                break
            turn.audio_latency_s = round(start - t_end, 3)
            end = _last_speech(rec, t_end) or start
            reply = [pcm_ for t, pcm_ in rec.audio if start - 0.1 <= t <= end + 0.2]
            reply_pcm = np.concatenate(reply) if reply else np.zeros(0, np.int16)
            turn.reply_audio_s = round(reply_pcm.size / SAMPLE_RATE, 2)
            turn.reply_dropouts, turn.reply_dropout_s = dropouts(reply_pcm)
            if opts.record:
                wav_path = opts.out_dir / f"{room_name}-turn{i}.wav"
                write_wav(wav_path, reply_pcm, SAMPLE_RATE)
                turn.wav_path = str(wav_path)
            frames = [(t, img) for t, img in rec.video if t_end <= t <= end + 0.2]
            turn.video_frames = len(frames)
            if ref is not None:
                best: tuple[float, np.ndarray] | None = None
                prev: np.ndarray | None = None
                for t, img in frames:
                    if prev is not None and turn.video_latency_s is None:
                        if _change_score(img, _gray(prev)) > threshold:
                            turn.video_latency_s = round(t - t_end, 3)
                    prev = img
                    d = _change_score(img, ref)  # the widest-open mouth is kept as a picture
                    if best is None or d > best[0]:
                        best = (d, img)
                shown = [(rec.video_shown[k], img) for k, (t, img) in enumerate(rec.video)
                         if t_end <= t <= end + 0.2]
                lip = lip_offset(rec.audio, shown, ref, start, end)
                if lip is not None:
                    turn.lip_offset_s, turn.lip_sync_r = lip
                if best is not None and opts.record:
                    import cv2

                    p = opts.out_dir / f"{room_name}-turn{i}-mouth.png"
                    cv2.imwrite(str(p), cv2.cvtColor(best[1], cv2.COLOR_RGB2BGR))
                    turn.frame_paths.append(str(p))
            jb_after = await _jitter_buffers(room)
            turn.audio_jitter_buffer_ms = _jitter_ms(jb_before, jb_after, "audio")
            turn.video_jitter_buffer_ms = _jitter_ms(jb_before, jb_after, "video")
            if opts.transcribe_replies:
                turn.reply_text = await asyncio.to_thread(transcribe, reply_pcm, SAMPLE_RATE)
            _caption_turn(rec, turn, opts.identity, t_end, start, end)
            result.turns.append(turn)
        if decoded_from is not None and decoded_from[1] is not None:
            decoded = await _video_decoded(room)
            if decoded is not None and time.monotonic() > decoded_from[0]:
                result.video_fps_decoded = round(
                    (decoded - decoded_from[1]) / (time.monotonic() - decoded_from[0]), 2)
        if opts.interrupt_prompt and result.error is None:
            heard_wav = opts.out_dir / f"{room_name}-spoken-over.wav" if opts.record else None
            result.interruption = await _interrupt(rec, opts, speech_q, spoken, heard_wav)
        result.captions = rec.caption_segments()
        arrivals = rec.video_arrivals
        if len(arrivals) > 1:
            result.video_fps = round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2)
            result.video_max_gap_s = round(max(b - a for a, b in itertools.pairwise(arrivals)), 3)
        jobs = getattr(room, "remote_participants", {})
        for p in jobs.values():
            sid = p.attributes.get("avatar.session_id") if p.attributes else None
            if sid:
                result.session_id = sid
    except Exception as err:  # the caller reports, it does not crash
        result.error = f"{type(err).__name__}: {err}"
    finally:
        if mic_task:
            mic_task.cancel()
        for task in rec.tasks:
            task.cancel()
        await room.disconnect()
    return result
