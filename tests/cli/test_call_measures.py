"""The caller's own measures: what bench figures are computed from."""

from __future__ import annotations

import numpy as np
import pytest

from cli.call import SAMPLE_RATE, speech_onset


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
