"""The caller's own measures: what bench figures are computed from."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from cli.call import (
    REPLY_SILENCE_S,
    SAMPLE_RATE,
    _Recorder,
    _wait_quiet,
    _wait_spoken,
    dropouts,
    speech_onset,
)


def _tone(seconds: float, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return amplitude * np.sin(2 * np.pi * 220 * t) + rng.normal(0, amplitude / 20, t.size)


@pytest.mark.unit
@pytest.mark.parametrize("noise_rms", [5.0, 1200.0])  # faint room tone; 15 dB under the speech
def test_speech_onset_skips_the_clips_leading_room_tone(noise_rms: float) -> None:
    rng = np.random.default_rng(1)
    lead = rng.normal(0, noise_rms, int(0.6 * SAMPLE_RATE))
    speech = _tone(1.0, 9000.0, rng) + rng.normal(0, noise_rms, SAMPLE_RATE)
    pcm = np.concatenate([lead, speech]).astype(np.int16)
    # an interruption timed from the queued clip would count the 0.6 s of quiet as latency
    assert speech_onset(pcm) == pytest.approx(0.6, abs=0.011)


@pytest.mark.unit
def test_speech_onset_of_a_clip_that_starts_speaking_or_is_silent() -> None:
    rng = np.random.default_rng(2)
    assert speech_onset(_tone(0.5, 9000.0, rng).astype(np.int16)) == 0.0
    assert speech_onset(np.zeros(SAMPLE_RATE, np.int16)) == 0.0


def _sound(rec: _Recorder, seg: str | None = None, text: str = "") -> float:
    """The agent's audio is loud now (and, with a segment, a caption chunk arrives)."""
    now = time.monotonic()
    rec.loud.append(now)
    if seg is not None:
        rec.caption_chunks.append((now, seg, "agent", text))
    return now


@pytest.mark.unit
async def test_caller_waits_out_a_stall_inside_the_agents_speech() -> None:
    # On a busy machine the greeting's audio stalled for longer than the quiet rule; the
    # harness's caller then spoke over the greeting's tail and heard it as its reply. A
    # reply's stall did the same to a turn: CI heard "Here." of a longer answer.
    rec = _Recorder()
    since = time.monotonic()
    first = _sound(rec, "greet", "Hello, I'm Ava. ")
    greeting = asyncio.create_task(_wait_spoken(rec, since, "caller", 30.0))
    assert await _wait_quiet(rec, since, 10.0) == first  # the quiet rule alone says "over"
    # its caption segment is still open: the caller keeps waiting (a poll step is 0.02 s)
    finished, _ = await asyncio.wait({greeting}, timeout=0.3)
    assert not finished
    last = _sound(rec, "greet", "I'm in the harbor.")
    rec.caption_final["greet"] = True  # the agent closes the segment when playout ends
    assert await asyncio.wait_for(greeting, 10.0) == first
    assert time.monotonic() - last >= REPLY_SILENCE_S


@pytest.mark.unit
async def test_greeting_without_captions_ends_on_quiet() -> None:
    rec = _Recorder()
    since = time.monotonic()
    first = _sound(rec)
    assert await _wait_spoken(rec, since, "caller", 10.0) == first
    assert time.monotonic() - first >= REPLY_SILENCE_S


@pytest.mark.unit
def test_dropouts_count_digital_silence_inside_the_reply_only() -> None:
    rng = np.random.default_rng(3)
    speech = _tone(0.5, 9000.0, rng)
    quiet_voice = rng.normal(0, 40, int(0.3 * SAMPLE_RATE))  # a pause the voice breathes in
    nothing = np.zeros(int(0.12 * SAMPLE_RATE))  # the sender had nothing to send
    pcm = np.concatenate([np.zeros(SAMPLE_RATE), speech, nothing, speech, quiet_voice, speech,
                          np.zeros(int(0.02 * SAMPLE_RATE)), speech, np.zeros(SAMPLE_RATE)])
    count, seconds = dropouts(pcm.astype(np.int16))
    # the leading and trailing silence are not inside the reply; 20 ms is below the minimum
    assert count == 1 and seconds == pytest.approx(0.12, abs=0.011)
