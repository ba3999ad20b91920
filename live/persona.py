"""The persona's identity read from its instructions, and a guard on the streamed answer.

A 135M model drifts: asked its name it may say "I'm Emily" or "I'm SmolLM, made by Hugging
Face" although the instructions say Ava. :class:`PersonaGuard` sits on the streamed text and
replaces such claims before they are spoken: another name in "I'm X" / "my name is X" becomes
the persona's name, a sentence naming the model's makers becomes the persona's own
introduction. It holds back only the few characters that may still become such a claim, so the
first words are not delayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME_IN_INSTRUCTIONS = re.compile(
    r"(?i:\b(?:you are|you're|your name is|you are called|call yourself))\s+([A-Z][a-z]+)\b"
)
_ROLE_IN_INSTRUCTIONS = re.compile(
    r"(?i:\b(?:you are|you're))\s+[A-Z][a-z]+,\s+((?:a|an|the)\s+[^.,;]{3,80}?)(?=[.,;]|\s+(?:shown|who|that|in|at)\b)"
)
# "I'm X", "I am X", "my name is X", "call me X": X is a claimed name
_CLAIM = re.compile(
    r"(?i:\b(?:i'm|i am|im|my name is|my name's|name is|call me|i'm called|i am called))"
    r"\s+([A-Z][a-zA-Z]+)(?=[^a-zA-Z'-])"
)
_TRIGGER = re.compile(r"(?i)\b(?:i|im|my|name|call)\b")
# sentences that give the model's own identity away instead of the persona's
_MAKER = re.compile(
    r"(?i)\b(?:hugging\s*face|smol\s*lm\w*|chatgpt|openai|large language model|language model "
    r"(?:developed|created|trained|made)|an ai (?:model|language model) (?:developed|created|trained))"
)
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")
# capitalised words that follow "I'm" without being a name
NOT_NAMES = frozenset(
    "A An The Not Here Sorry Glad Happy Just So Always Your Afraid Fine Good Doing Great Well Also "
    "Still Really Very Sure AI Able Unable Ready Excited Delighted Pleased Thrilled Looking Going "
    "Currently Only Available Based Located Unfortunately Actually Definitely Certainly Okay OK "
    "Hi Hello Hey Yes No Thanks Thank Sorry Calling Talking Speaking Right Absolutely Of In On "
    "At From With Your My Our Their It This That".split()
)
HOLD_CHARS = 40  # at most this much text is held back while a claim may still be forming


@dataclass(frozen=True)
class Persona:
    name: str | None
    role: str | None

    @property
    def introduction(self) -> str:
        if self.name and self.role:
            return f"I'm {self.name}, {self.role}."
        if self.name:
            return f"I'm {self.name}."
        return ""


def persona_from_instructions(instructions: str) -> Persona:
    """The persona's name and role as the instructions state them ("You are Ava, a ...")."""
    name = _NAME_IN_INSTRUCTIONS.search(instructions)
    found = name.group(1) if name and name.group(1) not in NOT_NAMES else None
    role_m = _ROLE_IN_INSTRUCTIONS.search(instructions)
    role = " ".join(role_m.group(1).split()) if role_m else None
    if (role and role.lower().startswith("a ")) or (role and role.lower().startswith("an ")):
        role = "your " + role.split(" ", 1)[1]
    return Persona(found, role)


def other_names(text: str, name: str | None) -> list[str]:
    """Names the reply claims for itself that are not the persona's."""
    return [
        m.group(1)
        for m in _CLAIM.finditer(text + " ")
        if m.group(1) not in NOT_NAMES and (name is None or m.group(1).lower() != name.lower())
    ]


class PersonaGuard:
    """Streamed text in, the same text out with wrong identity claims replaced.

    ``feed`` returns what can be sent on now; ``flush`` returns the rest at the end.
    ``replaced`` counts the corrections (for logs and the benchmark).
    """

    def __init__(self, persona: Persona) -> None:
        self.persona = persona
        self.replaced = 0
        self._pending = ""  # held back: may still become a claim
        self._sent = ""  # what was sent of the current sentence
        self._dropping = False  # the rest of this sentence is being replaced

    def feed(self, piece: str) -> str:
        self._pending += piece
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _fix_names(self, text: str) -> str:
        name = self.persona.name
        if not name:
            return text

        def repl(m: re.Match[str]) -> str:
            claimed = m.group(1)
            if claimed in NOT_NAMES or claimed.lower() == name.lower():
                return m.group(0)
            self.replaced += 1
            return m.group(0)[: m.start(1) - m.start(0)] + name

        return _CLAIM.sub(repl, text)

    def _release(self, *, final: bool) -> str:
        out: list[str] = []
        while (end := _SENTENCE_END.search(self._pending)) is not None:
            sentence, self._pending = self._pending[: end.end()], self._pending[end.end() :]
            out.append(self._emit(sentence, sentence_done=True))
        if final:
            if self._pending:
                out.append(self._emit(self._pending, sentence_done=True))
                self._pending = ""
            return "".join(out)
        hold = self._hold_from(self._pending)
        ready, self._pending = self._pending[:hold], self._pending[hold:]
        if ready:
            out.append(self._emit(ready, sentence_done=False))
        return "".join(out)

    def _emit(self, text: str, *, sentence_done: bool) -> str:
        """Send ``text`` (part of the current sentence), replaced when it gives the wrong
        identity away."""
        out = ""
        if not self._dropping and _MAKER.search(self._sent + text):
            self._dropping = True
            self.replaced += 1
            intro = self.persona.introduction or "I'm your assistant."
            lead = " " if self._sent.strip() and not self._sent.endswith(" ") else ""
            out = (lead + "- " if self._sent.strip() else "") + intro
        elif not self._dropping:
            # a claim at the very end of the answer has no character after the name
            out = self._fix_names(text + "\0")[:-1] if sentence_done else self._fix_names(text)
            self._sent += out
        if sentence_done:
            self._sent, self._dropping = "", False
        return out

    @staticmethod
    def _hold_from(text: str) -> int:
        """Index from which ``text`` may still grow into an identity claim ("I'm Em..."):
        a trigger word in the last ``HOLD_CHARS`` characters not yet followed by a whole
        claim. Held text is released once the claim is complete (and fixed) or the text has
        grown past it."""
        for m in _TRIGGER.finditer(text, max(0, len(text) - HOLD_CHARS)):
            rest = text[m.start() :]
            if _CLAIM.match(rest) or len(rest) >= HOLD_CHARS // 2 + 8:
                continue
            return m.start()
        return len(text)

