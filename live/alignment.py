"""Phoneme timings: the side channel from the local TTS to the local avatar's mouth.

The local TTS calls an ``AlignmentCallback`` just before it pushes each synthesized chunk's
audio; the in-process avatar queues the timings and matches them to the audio it receives by
sample count (both travel in the same order), so visemes come from the phonemes actually
spoken. Without a callback (hosted TTS, separate avatar participant) the avatar falls back to
estimating mouth shapes from the audio itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    phoneme: str  # IPA phoneme as produced by espeak-ng / Piper
    start: float  # seconds from the start of the chunk
    duration: float  # seconds


# (timings, number of audio samples in the chunk, sample rate)
AlignmentCallback = Callable[[list[PhonemeTiming], int, int], None]


# ---- word timings (captions) -----------------------------------------------------------
#
# espeak-ng (inside Piper) separates words with a " " phoneme and ends clauses with
# punctuation phonemes, so a sentence's phoneme timings split into its spoken words. Spoken
# and written words mostly pair one to one; where they do not ("$3.50" is spoken as five
# words), the written words share the spoken ones in proportion to their length.

_SENTENCE_END = frozenset(".!?")
_BOUNDARY_MARKS = frozenset({" ", "^", "$", "_"})


def _is_punctuation(symbol: str) -> bool:
    return bool(symbol) and all(unicodedata.category(ch)[0] == "P" for ch in symbol)


def spoken_words(timings: list[PhonemeTiming]) -> list[tuple[float, float]]:
    """(start, end) of each spoken word in one sentence's phoneme timings (same clock)."""
    words: list[tuple[float, float]] = []
    start: float | None = None
    end = 0.0
    for t in timings:
        if t.phoneme in _BOUNDARY_MARKS or _is_punctuation(t.phoneme):
            if start is not None:
                words.append((start, end))
                start = None
            continue
        if start is None:
            start = t.start
        end = t.start + t.duration
    if start is not None:
        words.append((start, end))
    return words


def written_words(text: str) -> list[str]:
    """``text`` cut into words that keep their surrounding spaces and punctuation, so the
    pieces join back into ``text`` exactly (captions must read as the text was written)."""
    pieces: list[str] = []
    for m in re.finditer(r"\S+\s*", text):
        piece = m.group(0)
        if pieces and not any(ch.isalnum() for ch in piece):
            pieces[-1] += piece  # a lone dash or quote goes with the word before it
        else:
            pieces.append(piece)
    lead = text[: len(text) - len(text.lstrip())]
    if pieces:
        pieces[0] = lead + pieces[0]
    elif text:
        pieces = [text]
    return pieces


def _weight(piece: str) -> float:
    # digits are read out one or more words each ("2025" -> "twenty twenty five")
    return sum(3.0 if ch.isdigit() else 1.0 for ch in piece if ch.isalnum()) or 1.0


def pair_words(pieces: list[str], spoken: list[tuple[float, float]]
               ) -> list[tuple[str, float, float]]:
    """(piece, start, end) for written words spoken over ``spoken`` (one sentence)."""
    if not pieces:
        return []
    if not spoken:
        return [(p, 0.0, 0.0) for p in pieces]
    if len(pieces) == len(spoken):
        return [(p, s, e) for p, (s, e) in zip(pieces, spoken, strict=True)]
    weights = [_weight(p) for p in pieces]
    total = sum(weights)
    out: list[tuple[str, float, float]] = []
    acc = 0.0
    n = len(spoken)
    for p, w in zip(pieces, weights, strict=True):
        lo = min(n - 1, round(acc / total * n))
        acc += w
        hi = max(lo, min(n - 1, round(acc / total * n) - 1))
        out.append((p, spoken[lo][0], spoken[hi][1]))
    return out


class SentenceWords:
    """Written words of one synthesized text, timed as Piper speaks it.

    Piper may split a text into several sentences (espeak ends one at ".", "!", "?"), each
    with its own timings; ``next_sentence`` takes the written words up to the next sentence
    end and pairs them with that sentence's spoken words; ``rest`` gives whatever is left.
    ``breaks``: offsets in ``text`` where the engine cut it into pieces it speaks apart (a
    long sentence cut at a comma, ``engines.piper.piece_ends``); a piece ends its sentence
    there too, or its timings would carry the whole sentence's words (captions seconds ahead
    of the sound).
    """

    def __init__(self, text: str, breaks: Iterable[int] = ()) -> None:
        self._pieces = written_words(text)
        cuts = sorted(breaks)
        self._ends: list[bool] = []
        start = 0
        for p in self._pieces:
            end = start + len(p.rstrip())
            self._ends.append(any(start < b <= end for b in cuts))
            start += len(p)

    def next_sentence(self, timings: list[PhonemeTiming], offset: float
                      ) -> list[tuple[str, float, float]]:
        take = len(self._pieces)
        for i, p in enumerate(self._pieces):
            if self._ends[i] or p.rstrip().rstrip("\"')]}»”’").endswith(tuple(_SENTENCE_END)):
                take = i + 1
                break
        mine, self._pieces = self._pieces[:take], self._pieces[take:]
        self._ends = self._ends[take:]
        return [(p, offset + s, offset + e) for p, s, e in pair_words(mine, spoken_words(timings))]

    def rest(self) -> list[str]:
        rest, self._pieces, self._ends = self._pieces, [], []
        return rest
