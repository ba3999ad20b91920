"""The transcript end-of-turn rule and its LiveKit turn-detector wrapper (no models)."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit.agents.llm import ChatContext

from live.providers.local_stt import LocalSTT
from live.providers.turn import TranscriptTurnDetector
from live.providers.turn_text import text_completeness

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    ["What time is it?", "Please repeat that.", "I agree with you.", "Thank you very much!",
     "Who are you?", "My order number is 45279."],
)
def test_finished_sentences_are_complete(text: str) -> None:
    assert text_completeness(text) == "complete"


@pytest.mark.parametrize(
    "text",
    ["My phone number is...", "I would like to order a", "The problem is that the", "Please send it to.",
     "I think the best time is…", "We need a table for,", "So, um,", "I was wondering if"],
)
def test_turns_that_trail_off_are_incomplete(text: str) -> None:
    assert text_completeness(text) == "incomplete"


@pytest.mark.parametrize("text", ["", "  ", "Let's start", "rear left"])
def test_no_closing_mark_is_unsure_not_incomplete(text: str) -> None:
    assert text_completeness(text) == "unsure"


async def test_detector_waits_longer_only_for_an_unfinished_transcript() -> None:
    det = TranscriptTurnDetector()
    threshold = await det.unlikely_threshold(None)
    assert threshold is not None

    def ctx(user_text: str) -> ChatContext:
        c = ChatContext()
        c.add_message(role="assistant", content="Hello, how can I help?")
        c.add_message(role="user", content=user_text)
        return c

    assert await det.predict_end_of_turn(ctx("I'd like to book a table for two.")) >= threshold
    assert await det.predict_end_of_turn(ctx("I'd like to book...")) < threshold
    assert await det.predict_end_of_turn(ctx("Let's start")) >= threshold  # unsure: not held
    assert await det.supports_language(None) and not await det.supports_language("de")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "backchannel"),
    [("Mm-hm.", True), ("Mm-hmm.", True), ("Yeah.", True), ("Okay.", True), ("Yeah, okay.", True),
     ("I see.", True), ("Uh-huh.", True), ("Stop.", False), ("Sorry, stop.", False), ("Yes.", True), ("Yes, stop.", False), ("Sure.", True),
     ("Okay, stop please.", False), ("", False), ("Wait, what?", False), ("All right.", True),
     ("Alright.", True)],
)
def test_backchannels_are_told_from_interruptions(text: str, backchannel: bool) -> None:
    from live.providers.local_stt import is_backchannel

    assert is_backchannel(text) is backchannel


@pytest.mark.parametrize("text", ["MMMM.", "Hmm.", "Mhm.", "Mm-hmm, okay.", "M M H.", "M-M-H-M."])
def test_hums_however_spelled_are_backchannels(text: str) -> None:
    from live.providers.local_stt import is_backchannel

    assert is_backchannel(text)


def _local_stt() -> LocalSTT:
    return LocalSTT(engine=None)  # type: ignore[arg-type]  # bookkeeping only, no model


async def test_stt_tells_whether_speech_still_being_transcribed_had_words() -> None:
    stt = _local_stt()
    assert await stt.final_of_pending(0.01) is False  # nothing pending: no wait
    first = stt._utterance_began(time.monotonic())
    stt._utterance_heard(first, words=True)
    assert await stt.final_of_pending(0.01) is False  # the first part's final is out
    second = stt._utterance_began(time.monotonic())
    assert await stt.final_of_pending(0.01) is None  # still transcribing after the timeout
    waiting = asyncio.ensure_future(stt.final_of_pending(10.0))
    asyncio.get_running_loop().call_soon(stt._utterance_heard, second, True)
    assert await waiting is True
    third = stt._utterance_began(time.monotonic())
    waiting = asyncio.ensure_future(stt.final_of_pending(10.0))
    asyncio.get_running_loop().call_soon(stt._utterance_heard, third, False)  # a cough
    assert await waiting is False


async def test_a_turn_does_not_end_on_words_while_more_are_being_transcribed() -> None:
    """'The address is...' + pause + 'twelve Garden Street': the second part's transcript is
    late; the detector holds the turn instead of ending it on the first part's words."""
    stt = _local_stt()
    det = TranscriptTurnDetector(stt)
    threshold = await det.unlikely_threshold(None)
    assert threshold is not None
    c = ChatContext()
    c.add_message(role="user", content="What time is it?")  # reads as a finished sentence
    assert await det.predict_end_of_turn(c) >= threshold
    more = stt._utterance_began(time.monotonic())
    stt._finals_sent += 1  # its final, as the stream sends it
    waiting = asyncio.ensure_future(det.predict_end_of_turn(c))
    asyncio.get_running_loop().call_soon(stt._utterance_heard, more, True)
    # then it waits for the session to receive that final (which would cancel it)
    await asyncio.wait({waiting}, timeout=0.1)
    assert not waiting.done()
    stt.final_received()
    assert await waiting < threshold
