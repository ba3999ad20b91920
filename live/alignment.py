"""Phoneme timings: the side channel from the local TTS to the local avatar's mouth.

The local TTS calls an ``AlignmentCallback`` just before it pushes each synthesized chunk's
audio; the in-process avatar queues the timings and matches them to the audio it receives by
sample count (both travel in the same order), so visemes come from the phonemes actually
spoken. Without a callback (hosted TTS, separate avatar participant) the avatar falls back to
estimating mouth shapes from the audio itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    phoneme: str  # IPA phoneme as produced by espeak-ng / Piper
    start: float  # seconds from the start of the chunk
    duration: float  # seconds


# (timings, number of audio samples in the chunk, sample rate)
AlignmentCallback = Callable[[list[PhonemeTiming], int, int], None]
