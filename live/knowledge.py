"""The operator's knowledge: passages retrieved locally (BM25) for each caller turn.

The session's ``knowledge`` text (hours, prices, names...) is cut into short passages once;
at each turn the passages that best match the caller's words are given to the model next to
the question, so exact facts can reach the answer unchanged. BM25 (``rank-bm25``) is lexical,
offline and takes well under a millisecond on a few hundred passages: no added latency worth
measuring against the model's first token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rank_bm25 import BM25Okapi

MAX_KNOWLEDGE_CHARS = 20_000
PASSAGE_CHARS = 240
_WORD = re.compile(r"[a-z0-9]+(?:['.:][a-z0-9]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
STOPWORDS = frozenset(
    "a an the and or but if then so to of in on at for from by with about as is are was were be "
    "been am do does did have has had i you he she it we they me my your our their this that "
    "these those there here what which who whom when where why how can could would should will "
    "may might must just please tell me us know any some much many".split()
)
# a few words callers use for what operators write differently
SYNONYMS = {
    "cost": ("price",),
    "costs": ("price",),
    "price": ("cost",),
    "much": ("price",),
    "open": ("hour",),
    "close": ("hour", "open"),
    "hours": ("open",),
    "phone": ("call", "number"),
    "call": ("phone",),
    "email": ("mail",),
    "located": ("address",),
    "where": ("address",),
    "address": ("located",),
    "owner": ("founder",),
    "boss": ("manager",),
    "start": ("found", "open"),
    "started": ("found", "open"),
    "city": ("based", "located", "address"),
    "pay": ("payment",),
}


def _stem(word: str) -> str:
    if word.endswith(("ches", "shes", "sses", "xes")) and len(word) > 5:
        return word[:-2]
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def tokens(text: str, *, expand: bool = False) -> list[str]:
    """Lower-cased content words, lightly stemmed (``opening`` -> ``open``)."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS and not (expand and w in SYNONYMS):
            continue
        if w not in STOPWORDS:
            out.append(_stem(w))
        if expand:
            out.extend(_stem(s) for s in SYNONYMS.get(w, ()))
    return out


def passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Paragraphs (or lines), long ones cut into runs of whole sentences."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*[-*•]|\s*\w[^\n]{0,40}:)", text):
        block = " ".join(block.split()).lstrip("-*• ")
        if not block:
            continue
        current = ""
        for sentence in _SENTENCE.split(block):
            if current and len(current) + len(sentence) + 1 > max_chars:
                out.append(current)
                current = sentence
            else:
                current = f"{current} {sentence}".strip()
        if current:
            out.append(current)
    return out


@dataclass(frozen=True)
class Hit:
    passage: str
    score: float


class KnowledgeBase:
    """BM25 over the passages of one knowledge text; built once per session."""

    def __init__(self, text: str) -> None:
        self.passages = passages(text[:MAX_KNOWLEDGE_CHARS])
        self._tokens = [set(tokens(p)) for p in self.passages]
        corpus = [tokens(p) or ["_"] for p in self.passages]
        self._bm25 = BM25Okapi(corpus) if corpus else None

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, *, k: int = 2, min_score: float = 0.5) -> list[Hit]:
        """The ``k`` best passages for ``query`` (none when nothing matches well).

        A passage must share a word with the query. In a handful of passages BM25's idf of a
        word found in half of them is 0, so ties are broken by the number of shared words."""
        if self._bm25 is None:
            return []
        words = tokens(query, expand=True)
        if not words:
            return []
        scores = self._bm25.get_scores(words)
        asked = set(words)
        shared = [len(asked & have) for have in self._tokens]
        ranked = sorted(
            (i for i in range(len(scores)) if shared[i]), key=lambda i: (-scores[i], -shared[i])
        )[:k]
        if not ranked:
            return []
        best = float(scores[ranked[0]])
        if best <= 0:  # no word tells the passages apart: the one sharing most words
            return [Hit(self.passages[ranked[0]], 0.0)]
        # keep the runner-up only when it is nearly as good: one sharp passage beats two
        return [
            Hit(self.passages[i], float(scores[i]))
            for i in ranked
            if scores[i] >= min_score and scores[i] >= best * 0.6
        ]


FACTS_PREFIX = "Facts from the operator's notes: "


def knowledge_message(hits: Sequence[Hit]) -> str:
    """The note put before the caller's question (the local LLM folds it into the question)."""
    return FACTS_PREFIX + "\n".join(h.passage for h in hits)


def _covered(word: str, passage_words: set[str]) -> bool:
    return word in passage_words or any(_stem(s) in passage_words for s in SYNONYMS.get(word, ()))


def coverage(question: str, passage: str) -> float:
    """Share of the question's content words (or their synonyms) found in ``passage``."""
    asked = tokens(question)
    if not asked:
        return 0.0
    have = set(tokens(passage))
    return sum(_covered(w, have) for w in asked) / len(asked)


def spoken_passage(passage: str) -> str:
    """A passage as a spoken answer: a leading "Croissant:" label goes when the sentence
    repeats it ("Croissant: a butter croissant costs..." -> "A butter croissant costs...")."""
    label, sep, rest = passage.partition(":")
    rest = rest.strip()
    if sep and rest and len(label) <= 40 and set(tokens(label)) <= set(tokens(rest)):
        return rest[0].upper() + rest[1:]
    return passage
