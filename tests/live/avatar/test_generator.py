"""The face generator on its own: frame timing, lip movement, interruption, idle."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions

from live.avatar.face import FaceRenderer
from live.avatar.generator import BlinkScheduler, FaceVideoGenerator, FrameInfo
from live.avatar.portrait import load_pack
from tests.live.avatar.conftest import SpeechClip, dark_fraction, rgba

pytestmark = pytest.mark.unit

W = H = 512
FPS = 25
SR = 24000
OPTS = AvatarOptions(video_width=W, video_height=H, video_fps=FPS, audio_sample_rate=SR,
                     audio_channels=1)


@pytest.fixture(scope="module")
def renderer() -> FaceRenderer:
    return FaceRenderer(load_pack(), width=W, height=H)


@dataclass
class Run:
    """What came out of the generator, in order."""

    video: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    speaking: list[bool] = field(default_factory=list)
    audio: list[npt.NDArray[np.int16]] = field(default_factory=list)  # per speaking frame
    infos: list[FrameInfo] = field(default_factory=list)
    segment_ends: int = 0
    delay: int = 0  # frames the mouth trails its audio (the generator's mouth_delay)


def make_gen(renderer: FaceRenderer, run: Run, seed: int = 1) -> FaceVideoGenerator:
    return FaceVideoGenerator(renderer=renderer, options=OPTS, seed=seed,
                              frame_listener=run.infos.append)


async def feed(gen: FaceVideoGenerator, clip: SpeechClip, *, aligned: bool,
               end: bool = True) -> None:
    """Push the clip like the TTS would: timings first, then that chunk's audio in 100 ms."""
    step = clip.sample_rate // 10
    pos = 0
    for timings, n in clip.chunks:
        if aligned:
            gen.alignment_callback(timings, n, clip.sample_rate)
        chunk = clip.samples[pos:pos + n]
        pos += n
        for i in range(0, n, step):
            part = chunk[i:i + step]
            await gen.push_audio(rtc.AudioFrame(part.tobytes(), clip.sample_rate, 1, part.size))
    if end:
        await gen.push_audio(AudioSegmentEnd())


async def collect(gen: FaceVideoGenerator, run: Run, *, until_end: bool = True,
                  max_frames: int = 10_000) -> None:
    async for item in gen:
        if isinstance(item, rtc.VideoFrame):
            run.video.append(rgba(bytes(item.data), item.width, item.height))
            run.speaking.append(False)
        elif isinstance(item, rtc.AudioFrame):
            run.speaking[-1] = True
            run.audio.append(np.frombuffer(item.data, np.int16).copy())
        else:
            run.segment_ends += 1
            if until_end:
                return
        if len(run.video) >= max_frames:
            return


def pearson(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


async def speak(renderer: FaceRenderer, clip: SpeechClip, *, aligned: bool) -> Run:
    run = Run()
    gen = make_gen(renderer, run)
    run.delay = gen.mouth_delay_frames
    feeder = asyncio.create_task(feed(gen, clip, aligned=aligned))
    await asyncio.wait_for(collect(gen, run), 60)
    await feeder
    await gen.aclose()
    return run


def openness(run: Run, renderer: FaceRenderer) -> tuple[list[float], list[float]]:
    """Per speaking frame: dark share of the mouth box (above idle) and audio RMS."""
    box = renderer.mouth_box()
    idle = dark_fraction(renderer.render_idle(), box)
    opened, env = [], []
    for img, spk in zip(run.video, run.speaking, strict=True):
        if spk:
            opened.append(dark_fraction(img, box) - idle)
    for chunk in run.audio:
        env.append(float(np.sqrt(np.mean(chunk.astype(np.float32) ** 2))))
    # compare each mouth with the audio it shows (run.delay frames earlier)
    d = run.delay
    return opened[d:], env[: len(env) - d]


async def test_frame_count_matches_audio_duration(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    run = await speak(renderer, speech_clip, aligned=False)
    expected = speech_clip.duration * FPS
    n_speaking = sum(run.speaking)
    assert abs(n_speaking - expected) <= 2, (n_speaking, expected)
    # exactly one audio chunk per speaking frame, each sample_rate // fps long
    assert len(run.audio) == n_speaking
    assert {c.size for c in run.audio} == {SR // FPS}
    assert run.segment_ends == 1


@pytest.mark.parametrize("aligned", [False, True], ids=["audio-only", "phoneme-timings"])
async def test_mouth_opening_follows_the_speech_envelope(
    renderer: FaceRenderer, speech_clip: SpeechClip, aligned: bool, avatar_artifacts: Path
) -> None:
    """Measure: dark-pixel share of the rendered mouth vs the frame's audio RMS."""
    run = await speak(renderer, speech_clip, aligned=aligned)
    opened, env = openness(run, renderer)
    r = pearson(opened, env)
    (avatar_artifacts / f"envelope_r_{'aligned' if aligned else 'audio'}.txt").write_text(
        f"pearson r = {r:.3f} over {len(opened)} frames\n"
    )
    assert r >= 0.6, r
    # the mouth really opens during speech and is shut in the pauses
    assert max(opened) > 0.05
    # pauses: a quiet frame after two quiet frames (not the jaw still closing)
    quiet = [opened[k] for k in range(2, len(env)) if max(env[k - 2:k + 1]) < 30]
    assert quiet and max(quiet) < 0.01, quiet


async def test_phoneme_timings_shape_the_mouth(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    """With timings, bilabials (m/b/p) close the mouth and open vowels open it."""
    run = await speak(renderer, speech_clip, aligned=True)
    infos = [i for i in run.infos if i.speaking][run.delay:]
    t = 0.0
    vowel_frames: list[int] = []
    bilabial_frames: list[int] = []
    for timings, n in speech_clip.chunks:
        for pt in timings:
            mid = t + pt.start + pt.duration / 2
            k = int(mid * FPS)
            if pt.duration >= 0.05 and pt.phoneme in "aɑæɐʌ":
                vowel_frames.append(k)
            elif pt.duration >= 0.05 and pt.phoneme in "mbp":
                bilabial_frames.append(k)
        t += n / speech_clip.sample_rate
    assert vowel_frames and bilabial_frames
    vowel_open = np.mean([infos[k].mouth.open for k in vowel_frames if k < len(infos)])
    bilabial_open = np.mean([infos[k].mouth.open for k in bilabial_frames if k < len(infos)])
    assert vowel_open > 2 * bilabial_open, (vowel_open, bilabial_open)


async def test_interruption_closes_the_mouth_and_drops_the_audio(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    run = Run()
    gen = make_gen(renderer, run)
    await feed(gen, speech_clip, aligned=False)
    frames = aiter(gen)
    # play into the speech until the mouth is clearly open
    for _ in range(400):
        item = await anext(frames)
        if isinstance(item, rtc.AudioFrame) and run.infos[-1].mouth.open > 0.4:
            break
    else:
        pytest.fail("mouth never opened")
    n_before = len(run.infos)
    cleared = gen.clear_buffer()
    if cleared is not None:
        await cleared
    after: list[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd] = []
    for _ in range(6):
        after.append(await asyncio.wait_for(anext(frames), 2))
    # nothing of the cleared speech comes out, and no segment end for it either
    assert all(isinstance(i, rtc.VideoFrame) for i in after)
    infos = run.infos[n_before:]
    assert all(not i.speaking for i in infos)
    # closed within 100 ms of media time: frames 0..2 after the clear (40 ms each)
    media0 = infos[0].media_time
    closed_at = next(i.media_time for i in infos if i.mouth.open == 0.0)
    assert closed_at - media0 <= 0.1
    box = renderer.mouth_box()
    idle = dark_fraction(renderer.render_idle(), box)
    last = rgba(bytes(after[-1].data), W, H)  # type: ignore[union-attr]
    assert dark_fraction(last, box) - idle < 0.01
    await gen.aclose()


async def test_idle_frames_keep_coming_with_the_mouth_shut(renderer: FaceRenderer) -> None:
    run = Run()
    gen = make_gen(renderer, run)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(collect(gen, run, until_end=False, max_frames=25), 5)
    elapsed = loop.time() - t0
    assert len(run.video) == 25 and not any(run.speaking) and not run.audio
    assert all(i.mouth.open == 0.0 for i in run.infos)
    # paced at the frame rate on its own (about 1 s for 25 frames), not a busy loop
    assert elapsed > 0.8
    box = renderer.mouth_box()
    idle = dark_fraction(renderer.render_idle(), box)
    assert max(dark_fraction(v, box) for v in run.video) - idle < 0.01
    await gen.aclose()


def test_blinks_come_every_three_to_six_seconds() -> None:
    sched = BlinkScheduler(random.Random(7))
    starts: list[float] = []
    prev = 0.0
    for k in range(int(120 * FPS)):
        t = k / FPS
        v = sched.value(t)
        if v > 0 and prev == 0:
            starts.append(t)
        prev = v
    gaps = np.diff(starts)
    singles = gaps[gaps > 1.0]
    assert len(starts) >= 18
    assert singles.min() >= 3.0 - 0.3 and singles.max() <= 6.0 + 0.3
    assert np.std(singles) > 0.4  # irregular, like people


async def test_strip_of_frames_for_people_to_look_at(
    renderer: FaceRenderer, speech_clip: SpeechClip, avatar_artifacts: Path
) -> None:
    run = await speak(renderer, speech_clip, aligned=True)
    idx = [i for i, s in enumerate(run.speaking) if s]
    pick = idx[10:10 + 24 * 2:2]  # every other frame, ~2 s of speech
    tiles = []
    for i in pick:
        img = run.video[i]
        x0, y0, x1, y1 = renderer.mouth_box()
        face = img[max(y0 - 150, 0):y1 + 40, max(x0 - 70, 0):x1 + 70, :3]
        tiles.append(face)
    rows = [np.concatenate(tiles[r * 6:(r + 1) * 6], axis=1) for r in range(len(tiles) // 6)]
    strip = np.concatenate(rows, axis=0)
    path = avatar_artifacts / "speech_strip.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    full = [run.video[i][:, :, :3] for i in pick[::6][:4]]
    assert cv2.imwrite(str(avatar_artifacts / "speech_frames.png"),
                       cv2.cvtColor(np.concatenate(full, axis=1), cv2.COLOR_RGB2BGR))
    assert path.stat().st_size > 10_000
    assert not math.isnan(float(strip.mean()))


async def test_pause_holds_the_speech_and_resume_goes_on_from_there(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    """The caller speaks over the agent: the face goes quiet at once, mouth shut, and after
    a backchannel the speech goes on where it stopped, nothing skipped or repeated."""
    reference = await speak(renderer, speech_clip, aligned=False)
    run = Run()
    gen = make_gen(renderer, run)
    await feed(gen, speech_clip, aligned=False)
    frames = aiter(gen)
    played: list[npt.NDArray[np.int16]] = []
    for _ in range(400):
        item = await anext(frames)
        if isinstance(item, rtc.AudioFrame):
            played.append(np.frombuffer(item.data, np.int16).copy())
            if run.infos[-1].mouth.open > 0.4:
                break
    else:
        pytest.fail("mouth never opened")
    gen.pause()
    held: list[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd] = []
    n_before = len(run.infos)
    for _ in range(10):  # 400 ms of media time
        held.append(await asyncio.wait_for(anext(frames), 2))
    assert all(isinstance(i, rtc.VideoFrame) for i in held)  # no sound while paused
    infos = run.infos[n_before:]
    assert not any(i.speaking for i in infos)
    assert next(k for k, i in enumerate(infos) if i.mouth.open == 0.0) <= 2  # shut in 2 frames
    gen.resume()
    async for item in frames:
        if isinstance(item, rtc.AudioFrame):
            played.append(np.frombuffer(item.data, np.int16).copy())
        elif isinstance(item, AudioSegmentEnd):
            break
    # the same sound as without the pause: nothing skipped, nothing played twice (the
    # resampler dithers: two runs of one clip differ by a unit or two in some samples)
    paused, plain = np.concatenate(played), np.concatenate(reference.audio)
    assert paused.size == plain.size
    assert int(np.abs(paused.astype(np.int32) - plain).max()) <= 4
    await gen.aclose()


async def test_an_interruption_while_paused_drops_the_speech_and_unpauses(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    run = Run()
    gen = make_gen(renderer, run)
    await feed(gen, speech_clip, aligned=False)
    frames = aiter(gen)
    for _ in range(100):
        if isinstance(await anext(frames), rtc.AudioFrame):
            break
    gen.pause()
    cleared = gen.clear_buffer()
    if cleared is not None:
        await cleared
    assert not gen.paused  # the next reply is not stuck behind the old pause
    short = speech_clip.samples[: SR // 2]
    await gen.push_audio(rtc.AudioFrame(short.tobytes(), SR, 1, short.size))
    await gen.push_audio(AudioSegmentEnd())
    out: list[npt.NDArray[np.int16]] = []
    async for item in frames:
        if isinstance(item, rtc.AudioFrame):
            out.append(np.frombuffer(item.data, np.int16))
        elif isinstance(item, AudioSegmentEnd):
            break
    heard = np.concatenate(out)[: short.size].astype(np.int32)
    assert int(np.abs(heard - short).max()) <= 4  # the new reply, from its start
    await gen.aclose()


class _RecordingSource:
    """An ``rtc.AudioSource`` that remembers what was handed to it."""

    def __init__(self, source: rtc.AudioSource) -> None:
        self.source = source
        self.sample_rate = source.sample_rate
        self.captured: list[npt.NDArray[np.int16]] = []
        self.resumed = False
        self.before_resume = 0  # frames captured before the resume

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await self.source.capture_frame(frame)
        self.captured.append(np.frombuffer(frame.data, np.int16).copy())
        if not self.resumed:
            self.before_resume = len(self.captured)

    def clear_queue(self) -> None:
        self.source.clear_queue()

    async def wait_for_playout(self) -> None:
        await self.source.wait_for_playout()


async def test_pause_takes_the_queued_sound_back_and_resume_plays_it_once(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    """The agent goes quiet when paused, not a publisher's queue later, and the sound that
    was queued but not heard is what plays on resume: nothing lost, nothing twice."""
    from live.avatar.publish import AUDIO_QUEUE_MS, AudioClockSynchronizer

    reference = await speak(renderer, speech_clip, aligned=False)
    source = rtc.AudioSource(SR, 1, queue_size_ms=AUDIO_QUEUE_MS)
    video = rtc.VideoSource(W, H)
    recording = _RecordingSource(source)
    sync = AudioClockSynchronizer(audio_source=recording, video_source=video)  # type: ignore[arg-type]
    given_back: list[int] = []
    take_back = sync.take_back

    def record_take_back() -> npt.NDArray[np.int16]:
        back = take_back()
        given_back.append(back.size)
        return back

    sync.take_back = record_take_back  # type: ignore[method-assign]
    run = Run()
    gen = make_gen(renderer, run)
    gen.set_av_sync(sync)
    await feed(gen, speech_clip, aligned=False)
    ended = asyncio.Event()
    idle_while_paused = asyncio.Event()
    paused_frames = 0

    async def pump() -> None:  # what AvatarRunner does with the generator's output
        nonlocal paused_frames
        async for item in gen:
            if isinstance(item, AudioSegmentEnd):
                ended.set()
                return
            await sync.push(item)
            if gen.paused and isinstance(item, rtc.VideoFrame):
                paused_frames += 1
                if paused_frames >= 5:
                    idle_while_paused.set()

    pumping = asyncio.create_task(pump())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sum(c.size for c in recording.captured) < SR // 2 or source.queued_duration < 0.03:
            assert loop.time() < deadline, "the speech never filled the publisher's queue"
            await asyncio.sleep(0.01)
        gen.pause()
        captured_at_pause = len(recording.captured)
        assert source.queued_duration == 0.0  # quiet now, not after the queue
        assert given_back and given_back[0] > 0
        await asyncio.wait_for(idle_while_paused.wait(), 5)
        captured_paused = len(recording.captured)
        recording.resumed = True
        gen.resume()
        await asyncio.wait_for(ended.wait(), 30)
    finally:
        pumping.cancel()
        await sync.aclose()
        await gen.aclose()
        await source.aclose()
    # while paused, at most the chunk that was waiting for room went out (and was cleared)
    assert captured_paused - captured_at_pause <= 1
    before = np.concatenate(recording.captured[: recording.before_resume])
    after = np.concatenate(recording.captured[recording.before_resume:])
    # the part of a chunk that had played is made whole again with silence before the rest
    pad = (-sum(given_back)) % (SR // FPS)
    assert not after[:pad].any()
    heard = np.concatenate([before[: before.size - sum(given_back)], after[pad:]])
    plain = np.concatenate(reference.audio)
    assert heard.size == plain.size  # (the resampler dithers: a unit or two apart)
    assert int(np.abs(heard.astype(np.int32) - plain).max()) <= 4


async def test_an_interruption_does_not_count_the_queued_sound_as_played(
    renderer: FaceRenderer,
) -> None:
    """The runner reports the playback position (the words the reply keeps) as soon as the
    generator's ``clear_buffer`` returns: sound still in the publisher's queue, dropped and
    never heard, is taken off by then."""
    from live.avatar.publish import AUDIO_QUEUE_MS, AudioClockSynchronizer

    source = rtc.AudioSource(SR, 1, queue_size_ms=AUDIO_QUEUE_MS)
    video = rtc.VideoSource(W, H)
    sync = AudioClockSynchronizer(audio_source=source, video_source=video)
    unplayed: list[float] = []
    sync.on_take_back = unplayed.append
    gen = make_gen(renderer, Run())
    gen.set_av_sync(sync)
    try:
        chunk = rtc.AudioFrame(np.full(SR // 50, 1000, np.int16).tobytes(), SR, 1, SR // 50)
        for _ in range(4):  # 80 ms: all of it fits the queue, none of it played yet
            await sync.push(chunk)
        assert source.queued_duration > 0.05
        cleared = gen.clear_buffer()
        assert unplayed and 0.05 < unplayed[0] <= 0.08 + 1e-6, unplayed  # before any await
        assert source.queued_duration == 0.0
        if cleared is not None:
            await cleared
    finally:
        await sync.aclose()
        await gen.aclose()
        await source.aclose()


async def test_a_pause_after_the_reply_ended_lets_its_last_sound_play(
    renderer: FaceRenderer, speech_clip: SpeechClip
) -> None:
    """Once the reply's end has gone to the runner, the agent has been told it played and
    nothing would resume it: a pause then (the caller's "yeah" on the last word) takes
    nothing back, and the queued tail plays out."""
    from live.avatar.publish import AUDIO_QUEUE_MS, AudioClockSynchronizer

    source = rtc.AudioSource(SR, 1, queue_size_ms=AUDIO_QUEUE_MS)
    sync = AudioClockSynchronizer(audio_source=source, video_source=rtc.VideoSource(W, H))
    given_back: list[float] = []
    sync.on_take_back = given_back.append
    gen = make_gen(renderer, Run())
    gen.set_av_sync(sync)
    await feed(gen, speech_clip, aligned=False)
    ended = asyncio.Event()

    async def pump() -> None:
        async for item in gen:
            if isinstance(item, AudioSegmentEnd):
                ended.set()
                continue
            await sync.push(item)

    pumping = asyncio.create_task(pump())
    try:
        await asyncio.wait_for(ended.wait(), 30)
        assert source.queued_duration > 0  # the tail is still queued
        gen.pause()
        assert given_back == [] and source.queued_duration > 0
        gen.resume()
    finally:
        pumping.cancel()
        await sync.aclose()
        await gen.aclose()
        await source.aclose()


async def test_the_publisher_says_how_long_it_has_had_nothing_to_play() -> None:
    """The silence a caller hears inside a reply: the traces put it down to a late voice or
    a late face from how long the publisher had been dry when the next chunk came."""
    from live.avatar.publish import AUDIO_QUEUE_MS, AudioClockSynchronizer

    source = rtc.AudioSource(SR, 1, queue_size_ms=AUDIO_QUEUE_MS)
    sync = AudioClockSynchronizer(audio_source=source, video_source=rtc.VideoSource(W, H))
    chunk = rtc.AudioFrame(np.full(SR // 50, 1000, np.int16).tobytes(), SR, 1, SR // 50)
    try:
        assert sync.dry_s == 0.0  # nothing played yet: not a dropout
        for _ in range(3):
            await sync.push(chunk)
        assert sync.dry_s == 0.0
        await source.wait_for_playout()
        await asyncio.sleep(0.1)  # the next chunk is late
        assert sync.dry_s >= 0.05
    finally:
        await sync.aclose()
        await source.aclose()



@dataclass
class _Publisher:
    """The synchronizer as the generator sees it: how long it has had nothing to play."""

    dry_s: float = 0.0

    async def clear_queue(self) -> None:
        pass


async def test_gaps_inside_a_reply_are_put_down_to_the_face_or_the_voice(
    renderer: FaceRenderer, speech_clip: SpeechClip, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's log says whether the silence the caller heard inside a reply was sound
    the generator had and came late with, or sound it did not have yet."""
    publisher = _Publisher()
    run = Run()
    gen = make_gen(renderer, run)
    gen.set_av_sync(publisher)  # type: ignore[arg-type]
    gaps: list[float] = []
    gen.on_gap = gaps.append  # the captions wait as long (live.lk_compat.delay_captions)
    half = len(speech_clip.samples) // 2
    first, second = speech_clip.samples[:half], speech_clip.samples[half:]
    rate = speech_clip.sample_rate
    await gen.push_audio(rtc.AudioFrame(first.tobytes(), rate, 1, first.size))
    caplog.set_level("DEBUG", logger="live.avatar.generator")
    chunks, waited = 0, False

    async def consume() -> None:
        nonlocal chunks, waited
        async for item in gen:
            if isinstance(item, AudioSegmentEnd):
                return
            if isinstance(item, rtc.AudioFrame):
                chunks += 1
                # the chunk after the 5th comes 50 ms late (the generator had it)
                publisher.dry_s = 0.05 if chunks == 5 else 0.0
            elif chunks and not run.infos[-1].speaking and not waited:
                # an idle frame: the first half is out and the voice's next words are not;
                # they come 200 ms after the publisher ran dry
                waited = True
                publisher.dry_s = 0.2
                await gen.push_audio(rtc.AudioFrame(second.tobytes(), rate, 1, second.size))
                await gen.push_audio(AudioSegmentEnd())

    await asyncio.wait_for(consume(), 60)
    await gen.aclose()
    [played] = [r for r in caplog.records if r.getMessage() == "reply played"]
    assert played.late_s == pytest.approx(0.05)  # type: ignore[attr-defined]
    assert played.starved_s == pytest.approx(0.2)  # type: ignore[attr-defined]
    assert gaps == [pytest.approx(0.05), pytest.approx(0.2)]


async def test_a_pause_is_no_gap_inside_the_reply(
    renderer: FaceRenderer, speech_clip: SpeechClip, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's voice paused the reply: LiveKit holds the captions itself, and the wait
    is not the voice or the face falling behind."""
    publisher = _Publisher()
    run = Run()
    gen = make_gen(renderer, run)
    gen.set_av_sync(publisher)  # type: ignore[arg-type]
    gaps: list[float] = []
    gen.on_gap = gaps.append
    clip = speech_clip.samples
    await gen.push_audio(rtc.AudioFrame(clip.tobytes(), speech_clip.sample_rate, 1, clip.size))
    await gen.push_audio(AudioSegmentEnd())
    caplog.set_level("DEBUG", logger="live.avatar.generator")
    chunks = 0

    async def consume() -> None:
        nonlocal chunks
        async for item in gen:
            if isinstance(item, AudioSegmentEnd):
                return
            if isinstance(item, rtc.AudioFrame):
                chunks += 1
                publisher.dry_s = 0.0
                if chunks == 3:
                    gen.pause()
            elif gen.paused:
                publisher.dry_s = 0.5  # the publisher played nothing while paused
                gen.resume()

    await asyncio.wait_for(consume(), 60)
    await gen.aclose()
    assert chunks > 3
    assert gaps == []
    [played] = [r for r in caplog.records if r.getMessage() == "reply played"]
    assert played.starved_s == 0.0 and played.late_s == 0.0  # type: ignore[attr-defined]
