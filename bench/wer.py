"""Word error rate: how the benchmarks (and the speech tests) score what was heard."""

from __future__ import annotations

import re

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
