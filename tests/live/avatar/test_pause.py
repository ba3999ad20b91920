"""The local avatar's audio output pauses for the caller and resumes only on a verdict.

LiveKit pauses the agent's output when the caller speaks over it and resumes on a timer;
the output holds that resume until the local STT says the caller spoke no words, so a slow
transcription never lets a reply resume for a moment before the interruption cuts it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from live.avatar import session as avatar_session
from live.avatar.session import PausableQueueAudioOutput

pytestmark = pytest.mark.unit


class Verdict:
    """Stands in for ``LocalSTT.words_since``: decided when the test says so."""

    def __init__(self) -> None:
        self.decided = asyncio.Event()
        self.words: bool | None = None

    async def __call__(self, since: float, timeout: float) -> bool | None:
        try:
            await asyncio.wait_for(self.decided.wait(), timeout)
        except TimeoutError:
            return None
        return self.words


class Held(list[bool]):
    """The generator's hold calls, in order; ``reaches`` waits for a given sequence."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Condition()

    def __call__(self, held: bool) -> None:
        self.append(held)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def reaches(self, expected: list[bool], timeout: float = 2.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self == expected), timeout)


def _output(held: Held, holding: bool = True) -> PausableQueueAudioOutput:
    """``holding``: the generator still has audio of the paused reply."""
    return PausableQueueAudioOutput(hold=held, holding=lambda: holding, sample_rate=24000)


async def test_the_output_says_it_can_pause() -> None:
    assert _output(Held()).can_pause


async def test_without_a_verdict_resume_is_immediate() -> None:
    held = Held()
    out = _output(held)
    out.pause()
    out.resume()
    assert held == [True, False]


async def test_resume_waits_for_the_verdict_and_goes_on_after_a_backchannel() -> None:
    held = Held()
    out = _output(held)
    verdict = Verdict()
    out.verdict = verdict
    out.pause()
    out.resume()  # LiveKit's timer: the STT has not decided yet
    await asyncio.sleep(0.05)
    assert held == [True]  # still paused
    verdict.words = False  # "mm-hm": no words
    verdict.decided.set()
    await held.reaches([True, False])


async def test_words_keep_it_paused_for_the_interruption(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avatar_session, "INTERRUPTION_WAIT_S", 0.3)
    held = Held()
    out = _output(held)
    verdict = Verdict()
    verdict.words, out.verdict = True, verdict
    verdict.decided.set()
    out.pause()
    out.resume()
    await asyncio.sleep(0.1)
    out.clear_buffer()  # the interruption arrives: no resume of the old reply after it
    await asyncio.sleep(0.4)
    assert held == [True]


async def test_words_with_no_interruption_resume_in_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avatar_session, "INTERRUPTION_WAIT_S", 0.1)
    held = Held()
    out = _output(held)
    verdict = Verdict()
    verdict.words, out.verdict = True, verdict
    verdict.decided.set()
    out.pause()
    out.resume()
    await held.reaches([True, False])


async def test_a_pause_nothing_resolves_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avatar_session, "MAX_PAUSE_S", 0.1)
    held = Held()
    out = _output(held)
    out.pause()
    await held.reaches([True, False])
    out.pause()  # LiveKit, still paused, pauses again for more speech: held again
    await held.reaches([True, False, True, False])


async def test_a_new_pause_cancels_a_pending_resume() -> None:
    held = Held()
    out = _output(held)
    verdict = Verdict()
    out.verdict = verdict
    out.pause()
    out.resume()
    out.pause()  # the caller speaks again before the verdict
    verdict.words = False
    verdict.decided.set()
    await asyncio.sleep(0.1)
    assert held == [True, True]


async def test_a_resume_with_nothing_held_is_immediate() -> None:
    """LiveKit also resumes before each new reply; with no old reply held, no verdict waits."""
    held = Held()
    out = _output(held, holding=False)
    out.verdict = Verdict()  # never decided
    out.pause()
    out.resume()
    assert held == [True, False]


async def test_a_new_reply_is_never_held_back_by_the_verdict() -> None:
    held = Held()
    out = _output(held)
    verdict = Verdict()
    out.verdict = verdict
    out.pause()
    out.resume()  # waits on the verdict, undecided: the old reply stays held...
    assert held == [True]
    # ...but LiveKit, no longer pausing, sends the reply to what the caller said
    await out.capture_frame(rtc.AudioFrame(bytes(480), 24000, 1, 240))
    assert held == [True, False]


async def test_the_verdict_covers_the_speech_from_the_first_pause() -> None:
    """LiveKit pauses the output again at every VAD window while the caller speaks. The
    verdict asked on resume must still cover the words that began it all; asked from the
    last of those pauses, it found none and let the reply resume over the caller."""
    held = Held()
    out = _output(held)
    asked: list[float] = []
    decided = asyncio.Event()

    async def verdict(since: float, timeout: float) -> bool | None:
        asked.append(since)
        decided.set()
        return False

    out.verdict = verdict
    out.pause()
    first = time.monotonic()
    for _ in range(3):  # the caller goes on speaking
        await asyncio.sleep(0.05)
        out.pause()
    out.resume()
    await asyncio.wait_for(decided.wait(), 2.0)
    assert asked[0] <= first, "the verdict was asked from a later pause"
    await held.reaches([True, False])  # held once, released once


class NoWords:
    """Stands in for ``LocalSTT.no_words_since``."""

    def __init__(self) -> None:
        self.decided = asyncio.Event()
        self.answered = asyncio.Event()  # the caller acts on the answer in the same step
        self.none = True

    async def __call__(self, since: float) -> bool:
        await self.decided.wait()
        self.answered.set()
        return self.none


async def test_a_backchannel_resumes_the_reply_before_livekits_timer() -> None:
    """The STT heard the caller stop and found no words: the reply goes on through the
    session's output chain at once; LiveKit's own resume, later, finds nothing held. Until
    it comes, the playing reply still counts as spoken over (LiveKit says "listening")."""
    held = Held()
    out = _output(held)
    verdict, no_words = Verdict(), NoWords()
    out.verdict, out.no_words = verdict, no_words
    chain: list[str] = []

    def resume_chain() -> None:  # the session's chain: captions first, then this output
        chain.append("resume")
        out.resume()

    out.resume_chain = resume_chain
    out.pause()
    assert held == [True] and out.over_caller
    verdict.words = False  # "mm-hm"
    verdict.decided.set()
    no_words.decided.set()
    await held.reaches([True, False])
    assert chain == ["resume"] and out.over_caller  # LiveKit has not resumed yet
    out.resume()  # LiveKit's timer
    assert held == [True, False] and not out.over_caller


async def test_words_over_the_reply_do_not_resume_it_early() -> None:
    held = Held()
    out = _output(held)
    no_words = NoWords()
    no_words.none = False  # "stop": the interruption is coming
    out.no_words, out.resume_chain = no_words, out.resume
    out.pause()
    no_words.decided.set()
    await asyncio.wait_for(no_words.answered.wait(), 2.0)
    assert held == [True]
    out.clear_buffer()
    assert not out.over_caller


async def test_speech_after_an_early_resume_pauses_the_reply_again() -> None:
    held = Held()
    out = _output(held)
    no_words = NoWords()
    out.no_words, out.resume_chain = no_words, out.resume
    out.pause()
    no_words.decided.set()
    await held.reaches([True, False])
    no_words.decided.clear()
    out.pause()  # the caller goes on: LiveKit pauses at its next VAD window
    await held.reaches([True, False, True])
    assert out.held


async def test_livekits_pauses_for_the_backchannels_tail_leave_the_early_resume_alone() -> None:
    """LiveKit's VAD hears the backchannel for its 0.55 s of silence more and pauses at each
    window: the STT has decided it had no words, so the reply plays on and the captions
    ahead of this output go on at once. Speech the STT has not decided pauses it again."""
    held = Held()
    out = _output(held)
    no_words = NoWords()
    decided_quiet = [True]
    chain: list[str] = []

    def resume_chain() -> None:
        chain.append("resume")
        out.resume()

    out.no_words, out.resume_chain = no_words, resume_chain
    out.heard_no_words = lambda since: decided_quiet[0]
    out.pause()
    no_words.decided.set()
    await held.reaches([True, False])
    out.pause()  # LiveKit's next VAD window
    await asyncio.sleep(0)  # one turn of the loop: the captions' resume was scheduled on it
    assert held == [True, False] and chain == ["resume", "resume"] and out.over_caller
    decided_quiet[0] = False  # the caller speaks again: new speech, not decided yet
    no_words.decided.clear()
    out.pause()
    await held.reaches([True, False, True])
