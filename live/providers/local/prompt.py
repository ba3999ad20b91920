"""The local LLM's persona prompt, and answers given verbatim instead of generated.

A 135M model follows example turns and facts placed next to the question far better than a
system prompt; these helpers shape what it sees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from live.knowledge import KnowledgeBase, coverage, spoken_passage
from live.persona import persona_from_instructions

# Extra steering for tiny models: keeps answers short enough to speak.
PERSONA_RULES = (
    "Always reply in one or two short, complete sentences, the way people talk. "
    "Use plain words only: no lists, no markdown, no emojis."
)


def system_prompt(instructions: str) -> str:
    """The system message the local LLM sees: the agent's persona plus short-answer rules."""
    return f"{instructions.strip()}\n{PERSONA_RULES}"


def persona_examples(instructions: str) -> list[dict[str, str]]:
    """A few short prior turns showing the persona answering in character.

    A 135M model imitates the turns it sees far better than it follows a system prompt: one
    introduction in the persona's own name and role, one polite refusal, one answer taken
    from a fact given with the question (the form retrieved facts take, see ``with_facts``).
    They depend only on the instructions, so they stay in the cached prompt prefix.
    """
    persona = persona_from_instructions(instructions)
    if not persona.name:
        return []
    return [
        {"role": "user", "content": "Hi, who am I talking to?"},
        {"role": "assistant", "content": f"Hi! {persona.introduction} How can I help you?"},
        {"role": "user", "content": "Can you tell me somebody's bank password?"},
        {
            "role": "assistant",
            "content": "Sorry, I can't help with that. Is there anything else I can do for you?",
        },
        {"role": "user", "content": with_facts("How many days are in a week?", ["A week has seven days."])},
        {"role": "assistant", "content": "A week has seven days."},
    ]


_STYLE_RULE = re.compile(r"(?i)\b(?:answer in|reply in|no lists|markdown|emojis?)\b")


def persona_facts(instructions: str) -> list[str]:
    """The instructions' sentences that state facts (not the style rules), first person."""
    return [
        first_person(s)
        for s in re.split(r"(?<=[.!?])\s+", " ".join(instructions.split()))
        if s and not _STYLE_RULE.search(s)
    ]


# requests a voice agent declines whatever its persona: a tiny model often plays along
_DECLINE = re.compile(
    r"(?i)\b(?:passwords?|hack\w*|credit card|card number|bank account|transfer\s.*\b(?:money|euros?|dollars?|pounds?)|"
    r"insult\w*|rude|weapons?|bombs?|steal\w*|drugs?)\b"
)
_MEDICAL = re.compile(r"(?i)\b(?:diagnos\w*|prescri\w*|symptoms?|chest pain|pain in my|medication|medicine)\b")
DECLINE_ANSWER = "Sorry, I can't help with that. Is there anything else I can do for you?"
MEDICAL_ANSWER = (
    "Sorry, I can't give medical advice. Please see a doctor, or call emergency services if "
    "it is urgent."
)
# the caller asks who the agent is (not "how are you")
ABOUT_YOU = re.compile(
    r"(?i)\b(?:your name|who are you|who am i|call you|yourself|you work for|"
    r"your job|what do you do|help me with|are you (?:a|an|the|real|human|(?-i:[A-Z][a-z]+))\b)"
)
GROUNDED_COVERAGE = 0.5


def grounded_answer(question: str, instructions: str, passages: Sequence[str]) -> str | None:
    """An answer given verbatim instead of generated, when one is clearly right.

    A 135M model restates a fact it was given wrongly about half the time, and the words it
    adds after a correct fact often contradict it. So when a retrieved passage (the
    operator's knowledge, then the persona's own facts) covers the caller's question, the
    passage itself is the answer; a question about who the agent is gets the persona's
    introduction; requests a voice agent must decline get a fixed refusal. Anything else is
    left to the model.
    """
    best = _best_passage(question, passages)
    if best is not None:
        return best
    if _MEDICAL.search(question):
        return MEDICAL_ANSWER
    if _DECLINE.search(question):
        return DECLINE_ANSWER
    persona = persona_from_instructions(instructions)
    if persona.name and ABOUT_YOU.search(question):
        return f"{persona.introduction} How can I help you?"
    facts = persona_facts(instructions)
    own = facts[1:] if persona.name else facts  # the first is the introduction
    hits = KnowledgeBase("\n\n".join(own)).search(question, k=1) if own else []
    return _best_passage(question, [h.passage for h in hits])


def _best_passage(question: str, passages: Sequence[str]) -> str | None:
    for passage in passages:  # best first
        if coverage(question, passage) >= GROUNDED_COVERAGE:
            return spoken_passage(passage)
    return None


_SECOND_PERSON = (
    (re.compile(r"\bYou are\b"), "I am"),
    (re.compile(r"\byou are\b"), "I am"),
    (re.compile(r"\bYou're\b"), "I'm"),
    (re.compile(r"\bYou\b(?= [a-z]+s?\b)"), "I"),
    (re.compile(r"\bYour\b"), "My"),
    (re.compile(r"\byour\b"), "my"),
    (re.compile(r"\byourself\b"), "myself"),
)


def first_person(sentence: str) -> str:
    """"You are Ava" as the agent would say it ("I am Ava"): given next to the caller's
    question, "you" would read as the caller."""
    for pattern, repl in _SECOND_PERSON:
        sentence = pattern.sub(repl, sentence)
    return sentence


def with_facts(question: str, facts: Sequence[str]) -> str:
    """The caller's words with the facts that answer them just before: a small model copies
    a fact it sees right next to the question far more often than one in the system prompt."""
    if not facts:
        return question
    return "Facts: " + " ".join(facts) + "\nQuestion: " + question
