"""Word error rate on normalised words (lower case, no punctuation)."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def words(text: str) -> list[str]:
    return _NON_WORD.sub(" ", text.lower().replace("-", " ")).split()


def edit_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words): sum them over a set before dividing."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[len(hyp)], len(ref)
