"""Mouth shapes: from phoneme timings when the TTS gives them, else from the audio itself.

A ``MouthShape`` has three knobs the face renderer understands: ``open`` (jaw drop),
``wide`` (corners out, as in "ee") and ``round`` (corners in, as in "oo"), each 0..1.
Phonemes map to shapes through a small IPA table (espeak-ng / Piper symbols); without
timings, ``AudioMouthEstimator`` derives the shape from the loudness envelope plus two
cheap spectral features (centroid and low-band share), which is enough to read as speech.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from live.alignment import PhonemeTiming


@dataclass(frozen=True, slots=True)
class MouthShape:
    open: float = 0.0
    wide: float = 0.0
    round: float = 0.0

    def scaled(self, k: float) -> MouthShape:
        return MouthShape(self.open * k, self.wide * k, self.round * k)

    def lerp(self, other: MouthShape, t: float) -> MouthShape:
        return MouthShape(
            self.open + (other.open - self.open) * t,
            self.wide + (other.wide - self.wide) * t,
            self.round + (other.round - self.round) * t,
        )


CLOSED = MouthShape()

# IPA symbol -> shape. Vowels open the jaw; bilabials shut it; the rest sit in between.
_SHAPES: dict[str, MouthShape] = {}


def _put(symbols: str, shape: MouthShape) -> None:
    for s in symbols:
        _SHAPES[s] = shape


_put("aɑæɐʌ", MouthShape(0.95, 0.15, 0.0))
_put("ɛeəɚɜ", MouthShape(0.6, 0.35, 0.0))
_put("iɪy", MouthShape(0.32, 0.85, 0.0))
_put("oɔɒ", MouthShape(0.65, 0.0, 0.7))
_put("uʊw", MouthShape(0.3, 0.0, 1.0))
_put("pbm", MouthShape(0.0, 0.1, 0.0))
_put("fv", MouthShape(0.12, 0.3, 0.0))
_put("θð", MouthShape(0.28, 0.2, 0.0))
_put("tdnlszɾ", MouthShape(0.25, 0.35, 0.0))
_put("ʃʒ", MouthShape(0.25, 0.0, 0.55))
_put("kgŋx", MouthShape(0.35, 0.15, 0.0))
_put("h", MouthShape(0.45, 0.1, 0.0))
_put("ɹr", MouthShape(0.28, 0.0, 0.45))
_put("j", MouthShape(0.25, 0.6, 0.0))
_STRESS = set("ˈˌ")  # attach to the following phoneme
_LENGTH = set("ːˑ")  # attach to the preceding phoneme


def phoneme_shape(symbol: str) -> MouthShape | None:
    """Shape for one IPA symbol; None for silence/pauses/markers (``^``, ``$``, punctuation)."""
    if symbol in _SHAPES:
        return _SHAPES[symbol]
    # multi-character symbols (e.g. "aɪ", "tʃ"): use the first character we know
    for ch in symbol:
        if ch in _SHAPES:
            return _SHAPES[ch]
    return None


@dataclass(frozen=True, slots=True)
class VisemeSpan:
    start: float  # seconds on the generator's audio clock
    end: float
    shape: MouthShape


def timings_to_spans(timings: Iterable[PhonemeTiming], offset: float) -> list[VisemeSpan]:
    """Turn one chunk's phoneme timings into spans on the audio clock.

    Stress marks take the shape of the next phoneme, length marks the previous one, a word
    gap keeps half of the previous shape (speech does not shut the mouth between words).
    """
    items = list(timings)
    shapes: list[MouthShape | None] = [None] * len(items)
    for i, t in enumerate(items):
        sym = t.phoneme
        if sym in _LENGTH:
            shapes[i] = next((s for s in reversed(shapes[:i]) if s is not None), None)
        elif sym in _STRESS:
            shapes[i] = next(
                (phoneme_shape(n.phoneme) for n in items[i + 1:]
                 if phoneme_shape(n.phoneme) is not None),
                None,
            )
        elif sym == " ":
            prev = next((s for s in reversed(shapes[:i]) if s is not None), None)
            shapes[i] = prev.scaled(0.5) if prev is not None else None
        else:
            shapes[i] = phoneme_shape(sym)
    spans = []
    for t, shape in zip(items, shapes, strict=True):
        spans.append(VisemeSpan(offset + t.start, offset + t.start + t.duration, shape or CLOSED))
    return spans


def shape_over(spans: list[VisemeSpan], start: float, end: float) -> MouthShape | None:
    """Time-weighted mean shape of the spans overlapping [start, end); None if none do."""
    total = 0.0
    o = w = r = 0.0
    for s in spans:
        ov = min(end, s.end) - max(start, s.start)
        if ov <= 0:
            continue
        total += ov
        o += s.shape.open * ov
        w += s.shape.wide * ov
        r += s.shape.round * ov
    if total <= 0:
        return None
    return MouthShape(o / total, w / total, r / total)


def rms_dbfs(samples: npt.NDArray[np.int16]) -> float:
    if samples.size == 0:
        return -120.0
    x = samples.astype(np.float32) / 32768.0
    return 10.0 * math.log10(float(np.mean(x * x)) + 1e-12)


class AudioMouthEstimator:
    """Mouth shape from one frame's audio: loudness opens, spectrum shapes.

    Loudness is judged against a slowly decaying peak, so quiet and loud voices both use
    the full range; below ``gate_db`` under the peak the mouth stays shut.
    """

    def __init__(self, *, sample_rate: int, range_db: float = 28.0) -> None:
        self._sr = sample_rate
        self._range_db = range_db
        self._peak_db = -20.0

    def reset(self) -> None:
        self._peak_db = -20.0

    def level(self, samples: npt.NDArray[np.int16]) -> float:
        """Loudness 0..1 relative to the running peak."""
        db = rms_dbfs(samples)
        self._peak_db = max(db, self._peak_db - 0.05, -40.0)
        return float(np.clip((db - (self._peak_db - self._range_db)) / self._range_db, 0.0, 1.0))

    def estimate(self, samples: npt.NDArray[np.int16], *, level: float | None = None) -> MouthShape:
        """Shape for one frame; pass ``level`` if ``level()`` was already called for it."""
        lvl = self.level(samples) if level is None else level
        if lvl <= 0.0 or samples.size < 32:
            return CLOSED
        x = samples.astype(np.float32)
        spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
        freqs = np.fft.rfftfreq(x.size, 1.0 / self._sr)
        power = spec * spec
        tot = float(power.sum()) + 1e-9
        centroid = float((freqs * power).sum() / tot)
        low = float(power[freqs < 900].sum() / tot)
        # voiced vowels: low-band heavy; fricatives (s, f, sh): centroid high, mouth narrow
        fric = float(np.clip((centroid - 2500.0) / 2500.0, 0.0, 1.0))
        openness = lvl ** 0.8 * (1.0 - 0.6 * fric)
        round_ = float(np.clip((low - 0.75) / 0.2, 0.0, 1.0)) * (1.0 - fric)
        wide = float(np.clip((centroid - 1200.0) / 1500.0, 0.0, 1.0)) * (1.0 - round_)
        return MouthShape(openness, 0.6 * wide, 0.6 * round_)


class MouthSmoother:
    """First-order attack/release smoothing, so the jaw moves like a jaw, not a meter."""

    def __init__(self, *, fps: float, attack_s: float = 0.035, release_s: float = 0.055) -> None:
        dt = 1.0 / fps
        self._a_up = 1.0 - math.exp(-dt / attack_s)
        self._a_down = 1.0 - math.exp(-dt / release_s)
        self.value = CLOSED

    def reset(self) -> None:
        self.value = CLOSED

    def step(self, target: MouthShape) -> MouthShape:
        v = self.value
        a_open = self._a_up if target.open > v.open else self._a_down
        new_open = v.open + (target.open - v.open) * a_open
        if new_open < 0.04 and target.open < 0.04:
            new_open = 0.0  # settle: a hair-thin gap reads as a drawn line, not a mouth
        self.value = MouthShape(
            new_open,
            v.wide + (target.wide - v.wide) * self._a_down,
            v.round + (target.round - v.round) * self._a_down,
        )
        return self.value
