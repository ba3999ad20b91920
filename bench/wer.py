"""Word error rate: how the benchmarks (and the speech tests) score what was heard."""

from __future__ import annotations

import re
from difflib import SequenceMatcher

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation, so WER counts only recognition errors."""
    return _NON_WORD.sub(" ", text.lower().replace("-", " ")).split()


def edit_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): sum them over a set of utterances before dividing."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[len(hyp)], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance divided by the reference length."""
    edits, n = edit_counts(reference, hypothesis)
    return edits / max(1, n)


def cut_alignment(stored: str, heard: str, min_run: int = 4,
                  max_respelled: int = 12) -> tuple[int, int | None]:
    """Where a cut reply's text ends against what a listener heard of it, letter by letter.

    Why letters: Whisper on a clip that ends mid-word respells what it heard ("the slide
    house keepers" for "the story of a lighthouse keeper", "the stories to like" for "the
    stories of a light-"): the words differ, the letters run on together. The heard letters
    past the last shared run are taken as that many respelled stored letters, at most
    ``max_respelled`` (a clip's end is a word or two; more is Whisper making things up).
    Returns (the letters in shared runs of at least ``min_run``, in order; stored words that
    begin past the last such run and its respelled tail; None when nothing lines up). All the
    runs count, not the longest: on a short clip Whisper can respell every word in between
    ("mine. I like how I keep" for "Mine, a lighthouse keeper": "mine" and "keep" line up).
    """
    words = normalize(stored)
    a = "".join(words)
    b = "".join(normalize(heard))
    if not a or not b:
        return 0, None
    blocks = [m for m in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks()
              if m.size >= min_run]
    if not blocks:
        return 0, None
    last = blocks[-1]
    respelled = min(max_respelled, len(b) - (last.b + last.size))
    end = last.a + last.size + respelled
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w)
    return sum(m.size for m in blocks), sum(1 for s in starts if s >= end)
