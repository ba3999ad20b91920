"""Does the transcript so far read like a finished turn? A rule on Whisper's own marks.

Whisper punctuates: it ends a finished sentence with ``.``, ``?`` or ``!`` and writes ``...``
when speech trails off. A turn that stops on an article, a preposition, a conjunction or a
verb that needs a continuation ("I'd like to order", "the address is") is not finished,
whatever the punctuation says. Measured on the turn-taking corpus (``bench.turns``), this rule
holds on robotic voices where the prosody models do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Completeness = Literal["complete", "unsure", "incomplete"]

# Words a finished English turn rarely ends on.
CONTINUATION_WORDS = frozenset(
    """
    a an the to and or but so because if of for with in on at from by into than
    when while which whose whether my your our their his her its
    is are was were am be been being i i'm i'd i'll we we're you're he she they it's
    um uh er erm like could would should shall must some any very really just also as
    """.split()
)
_TRAILING = re.compile(r"(\.\.\.|…|,|;|:|-|–|—)\s*$")
_FINAL = re.compile(r"[.?!]\s*$")
_WORD = re.compile(r"[a-z0-9']+")


def text_completeness(text: str) -> Completeness:
    """``complete`` (finished sentence), ``incomplete`` (clearly goes on) or ``unsure``."""
    t = text.strip().strip('"').strip()
    if not t:
        return "unsure"
    if _TRAILING.search(t):
        return "incomplete"
    words = _WORD.findall(t.lower())
    if words and words[-1] in CONTINUATION_WORDS:
        return "incomplete"
    if _FINAL.search(t):
        return "complete"
    return "unsure"  # no closing mark: Whisper often leaves it off short turns


class PendingSpeech(Protocol):
    """An STT that tells whether speech it has not finished transcribing had words, and
    whether the session has received the finals it sent."""

    async def final_of_pending(self, timeout: float) -> bool | None: ...

    async def finals_delivered(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class HeardFinal:
    """The last final transcript an STT sent: what the turn detector reads, and how sure the
    STT was of it."""

    text: str
    confidence: float  # 0..1; Whisper's: exp of the mean token log-probability
    speech_end: float  # wall-clock time (``time.time()``) the caller's speech ended


# How long a prediction waits for the transcript of speech still being transcribed, and then
# for the session to receive it.
PENDING_WAIT_S = 2.0
DELIVERY_WAIT_S = 0.5


async def words_still_coming(stt: PendingSpeech | None) -> bool:
    """True when the caller said more than the transcript so far holds: the turn must not end
    on these words. Waits (bounded) for that speech's transcript to reach the session: on
    receiving it the session cancels this prediction and predicts again on the whole turn."""
    if stt is None:
        return False
    if not await stt.final_of_pending(PENDING_WAIT_S):
        return False
    # the session cancels this prediction as it receives the final (it then predicts again
    # on the whole turn); if it does not, the turn waits the max delay
    await stt.finals_delivered(DELIVERY_WAIT_S)
    return True


def last_user_text(chat_ctx: Any) -> str | None:
    """The caller's transcript so far: the last user message LiveKit hands a turn detector."""
    for item in reversed(chat_ctx.items):
        if getattr(item, "role", None) == "user":
            return item.text_content or ""  # type: ignore[no-any-return]
    return None
