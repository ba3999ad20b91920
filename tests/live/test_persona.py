"""The persona guard: a streamed answer that gives another name is corrected before it is
spoken, without holding back the words that cannot become such a claim."""

from __future__ import annotations

import re

import pytest

from config.session import DEFAULT_INSTRUCTIONS
from live.persona import Persona, PersonaGuard, other_names, persona_from_instructions

pytestmark = pytest.mark.unit

AVA = Persona("Ava", "the voice assistant of Northwind Travel")


def stream(guard: PersonaGuard, text: str) -> list[str]:
    """Feed ``text`` token-like (a word with its leading space at a time)."""
    out = [guard.feed(piece) for piece in re.findall(r"\s*\S+", text)]
    out.append(guard.flush())
    return out


def test_the_persona_is_read_from_the_instructions() -> None:
    assert persona_from_instructions(DEFAULT_INSTRUCTIONS) == Persona(
        "Ava", "your friendly voice assistant"
    )
    sam = persona_from_instructions("You are Sam, the receptionist of Harbor Dental. Be kind.")
    assert sam == Persona("Sam", "the receptionist of Harbor Dental")
    assert persona_from_instructions("Answer briefly.").name is None


def test_another_name_is_replaced_by_the_personas() -> None:
    guard = PersonaGuard(AVA)
    out = "".join(stream(guard, "I'm Emily, the AI assistant here. How can I help?"))
    assert out == "I'm Ava, the AI assistant here. How can I help?"
    assert guard.replaced == 1
    guard = PersonaGuard(AVA)
    assert "".join(stream(guard, "Hi! My name is Sarah")) == "Hi! My name is Ava"


def test_the_models_own_identity_becomes_the_personas_introduction() -> None:
    guard = PersonaGuard(AVA)
    out = "".join(stream(guard, "I am SmolLM, a language model developed by Hugging Face. Ask me!"))
    assert "Hugging" not in out and "SmolLM" not in out
    assert out.startswith("I'm Ava, the voice assistant of Northwind Travel.")
    assert out.endswith("Ask me!")


def test_right_answers_pass_unchanged_and_early() -> None:
    guard = PersonaGuard(AVA)
    text = "Hello! I'm Ava, your assistant. The office opens at 9 am and closes at 5 pm."
    out = stream(guard, text)
    assert "".join(out) == text and guard.replaced == 0
    # words that cannot start a claim go out as they come: "Hello!" before the rest exists
    assert out[0] == "Hello!"
    # a held "I'm" is released as soon as the name is known to be right
    assert any(piece.endswith("I'm Ava,") for piece in out[:4])


@pytest.mark.parametrize(
    "text", ["I'm happy to help.", "I am not sure.", "I'm Sorry to hear that.", "This is Lisbon."]
)
def test_ordinary_sentences_are_not_name_claims(text: str) -> None:
    assert other_names(text, "Ava") == []
    guard = PersonaGuard(AVA)
    assert "".join(stream(guard, text)) == text and guard.replaced == 0


def test_other_names_lists_the_wrong_claims() -> None:
    assert other_names("I'm Emily, and my name is Emily.", "Ava") == ["Emily", "Emily"]
    assert other_names("I'm Ava.", "Ava") == []
