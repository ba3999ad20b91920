"""SmolLM2's end-of-turn score as a LiveKit text turn detector, with the real model."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from livekit.agents.llm import ChatContext

from config.settings import load_settings
from engines.llama import get_llama
from live.providers.local_stt import LocalSTT
from live.providers.registry import ProviderContext
from live.providers.turn import TranscriptTurnDetector, get_turn_llama, turn_handling
from live.providers.turn_lm import LanguageModelTurnDetector, end_probability, end_prompt
from live.providers.turn_text import HeardFinal

pytestmark = pytest.mark.slow

THRESHOLD = 0.01


def _ctx(user_text: str) -> ChatContext:
    c = ChatContext()
    c.add_message(role="assistant", content="Hello, how can I help?")
    c.add_message(role="user", content=user_text)
    return c


def test_prompt_drops_the_closing_marks_whisper_adds_to_fragments() -> None:
    assert end_prompt(' "Can you tell me?" ').endswith("user\nCan you tell me")
    assert end_prompt("My phone number is...").endswith("user\nMy phone number is")
    assert end_probability({".": 0.2, " ?": 0.1, "<|im_end|>": 0.05, " a": 0.6}) == pytest.approx(0.35)


# What the model says, not how fast: on a busy machine a score can miss the live 0.3 s bound
# (SCORE_TIMEOUT), and a late score ends the turn (test_a_late_score_never_holds_the_turn).
# Beside a busy loop in a CI run, "Can you tell me?" scored 1.0 that way.
SCORE_WAIT_S = 30.0


@pytest.mark.parametrize(
    "fragment", ["Can you tell me?", "I'd like to book.", "Do you have", "I would like to order.",
                 "My phone number is..."],
)
async def test_words_that_go_on_wait_the_max_delay(local_ctx: ProviderContext, fragment: str) -> None:
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S)
    assert await det.predict_end_of_turn(_ctx(fragment)) < THRESHOLD


@pytest.mark.parametrize(
    "turn", ["What time is it?", "My name is Daniel Fischer.", "I need some help with my order."],
)
async def test_finished_turns_end_after_the_min_delay(local_ctx: ProviderContext, turn: str) -> None:
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S)
    assert await det.predict_end_of_turn(_ctx(turn)) >= THRESHOLD


async def test_configured_through_turn_handling_on_an_engine_of_its_own(local_ctx: ProviderContext) -> None:
    settings = load_settings(_env_file=None, var_dir=local_ctx.settings.var_dir,
                             limits={"turn_detector": "lm", "turn_lm_threshold": 0.2})
    local_stt = LocalSTT(engine=None)  # type: ignore[arg-type]  # only its bookkeeping is used
    det = turn_handling(settings, local_ctx, stt=local_stt)["turn_handling"]["turn_detection"]
    assert isinstance(det, LanguageModelTurnDetector)
    assert det.prescore in local_stt.preflight_listeners  # the session's STT tells it early
    # a hosted STT: the transcript rule alone, no local model
    hosted = turn_handling(settings, local_ctx, stt=object())["turn_handling"]["turn_detection"]
    assert isinstance(hosted, TranscriptTurnDetector)
    assert await det.unlikely_threshold(None) == 0.2
    assert await det.supports_language(None) and not await det.supports_language("de")  # type: ignore[arg-type]
    # the reply's engine is not the scorer's: a score never takes a reply's slot
    assert get_turn_llama(local_ctx) is not get_llama(local_ctx, "smollm2-135m")
    assert get_turn_llama(local_ctx).parallel == 1
    # but it maps the same weights file (LLM__WEIGHTS): one copy of the model in memory
    assert get_turn_llama(local_ctx).options.weights == local_ctx.settings.llm.weights
    # llama.cpp's own server thread, where the scorer runs, carries its name (bench.cpu_share)
    assert "llama-turn" in _thread_names()


def _thread_names() -> set[str]:
    return {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}


async def test_a_late_score_never_holds_the_turn(local_ctx: ProviderContext) -> None:
    engine = get_turn_llama(local_ctx)
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(10.0)

    blocker = asyncio.ensure_future(engine.executor.run(busy))  # the scorer's only thread
    assert await asyncio.to_thread(started.wait, 10.0)
    try:
        det = LanguageModelTurnDetector(engine, THRESHOLD, timeout=0.05)
        assert await det.predict_end_of_turn(_ctx("Can you tell me?")) == 1.0  # silence rule
    finally:
        release.set()
        await blocker


def _heard(text: str, confidence: float, ended_ago: float = 0.0) -> LocalSTT:
    """A local STT whose last final is ``text`` at ``confidence``, spoken until ``ended_ago`` s ago."""
    stt = LocalSTT(engine=None)  # type: ignore[arg-type]  # only its bookkeeping is used
    stt.last_final = HeardFinal(text, confidence, time.time() - ended_ago)
    return stt


# A robotic "Can you hear me?" as Whisper heard it (espeak-us-f4, bench.turns.endpoint): the
# words read as a sentence that goes on, and Whisper's confidence in them was 0.65.
MISHEARD = "Can you bear me?"


async def test_an_unsure_transcript_waits_the_unsure_delay_not_the_max(local_ctx: ProviderContext) -> None:
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S,
                                    stt=_heard(MISHEARD, 0.65), unsure_confidence=0.7,
                                    unsure_delay=0.4)
    t0 = time.time()
    assert await det.predict_end_of_turn(_ctx(MISHEARD)) >= THRESHOLD
    # the score lets LiveKit end the turn after its min delay: only once the unsure delay,
    # counted from the end of speech, has passed
    assert time.time() - t0 >= 0.4 - 0.01


async def test_a_sure_transcript_that_goes_on_still_waits_the_max(local_ctx: ProviderContext) -> None:
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S,
                                    stt=_heard("I'd like to book", 0.9), unsure_confidence=0.7,
                                    unsure_delay=0.4)
    assert await det.predict_end_of_turn(_ctx("I'd like to book")) < THRESHOLD


async def test_confidence_counts_only_for_the_final_that_ends_the_turn(local_ctx: ProviderContext) -> None:
    # the last final is an earlier utterance's (another turn's): its confidence says nothing
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S,
                                    stt=_heard("Hello.", 0.3), unsure_confidence=0.7,
                                    unsure_delay=0.4)
    assert await det.predict_end_of_turn(_ctx("I'd like to book")) < THRESHOLD


async def test_speech_that_resumes_cancels_the_unsure_wait(local_ctx: ProviderContext) -> None:
    det = LanguageModelTurnDetector(get_turn_llama(local_ctx), THRESHOLD, timeout=SCORE_WAIT_S,
                                    stt=_heard(MISHEARD, 0.65), unsure_confidence=0.7,
                                    unsure_delay=30.0)
    task = asyncio.ensure_future(det.predict_end_of_turn(_ctx(MISHEARD)))
    done, _ = await asyncio.wait([task], timeout=2.0)
    assert not done  # still waiting out the unsure delay
    task.cancel()  # LiveKit cancels the end-of-turn task when the caller speaks again
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_unsure_delay_stays_within_the_min_and_max(local_ctx: ProviderContext) -> None:
    settings = load_settings(_env_file=None, var_dir=local_ctx.settings.var_dir, limits={
        "turn_detector": "lm", "endpointing_min_delay": 0.5, "endpointing_max_delay": 0.9,
        "endpointing_unsure_delay": 1.05, "turn_unsure_confidence": 0.6})
    det = turn_handling(settings, local_ctx, stt=LocalSTT(engine=None))["turn_handling"]["turn_detection"]  # type: ignore[arg-type]
    assert (det._unsure_delay, det._unsure_confidence) == (0.9, 0.6)


def _tiers(local_ctx: ProviderContext, stt: LocalSTT, complete_delay: float) -> LanguageModelTurnDetector:
    return LanguageModelTurnDetector(get_turn_llama(local_ctx), 0.001, timeout=SCORE_WAIT_S, stt=stt,
                                     unsure_confidence=0.7, unsure_delay=complete_delay + 0.2,
                                     sure_threshold=0.1, sure_delay=0.2,
                                     complete_delay=complete_delay)


async def test_a_turn_the_model_is_sure_of_ends_after_livekits_min_delay(local_ctx: ProviderContext) -> None:
    # "My name is Daniel Fischer" scores 0.46: no wait of the detector's own, whatever the
    # complete wait (LiveKit's min delay, the sure wait, then ends it)
    text = "My name is Daniel Fischer."
    det = _tiers(local_ctx, _heard(text, 0.9), complete_delay=60.0)
    assert det.shortest_delay == 0.2
    assert await asyncio.wait_for(det.predict_end_of_turn(_ctx(text)), 20.0) >= 0.1


async def test_a_turn_that_may_end_waits_the_complete_delay(local_ctx: ProviderContext) -> None:
    # "What time is it?" scores about 0.07: it may end, the model is not sure
    text = "What time is it?"
    det = _tiers(local_ctx, _heard(text, 0.9), complete_delay=0.5)
    t0 = time.time()
    p = await det.predict_end_of_turn(_ctx(text))
    assert 0.001 <= p < 0.1
    assert time.time() - t0 >= 0.5 - 0.01


async def test_without_the_local_stt_livekits_two_waits_stay(local_ctx: ProviderContext) -> None:
    det = _tiers(local_ctx, None, complete_delay=0.8)  # type: ignore[arg-type]
    assert det.shortest_delay is None
    settings = load_settings(_env_file=None, var_dir=local_ctx.settings.var_dir,
                             limits={"turn_detector": "lm"})
    local = turn_handling(settings, local_ctx, stt=LocalSTT(engine=None))  # type: ignore[arg-type]
    hosted = turn_handling(settings, local_ctx, stt=object())
    # with the local STT LiveKit's min delay is the sure wait; the detector waits the rest
    assert local["turn_handling"]["endpointing"]["min_delay"] == settings.limits.endpointing_sure_delay
    assert hosted["turn_handling"]["endpointing"]["min_delay"] == settings.limits.endpointing_min_delay


async def test_the_speculative_transcript_is_scored_before_the_final_asks(
    local_ctx: ProviderContext,
) -> None:
    """The local STT's preflight is scored as it goes out; when the final with the same words
    ends the turn, the prediction takes that score and needs no time on the scorer."""
    engine = get_turn_llama(local_ctx)
    stt = LocalSTT(engine=None)  # type: ignore[arg-type]  # only its bookkeeping is used
    det = LanguageModelTurnDetector(engine, THRESHOLD, timeout=0.05, stt=stt)
    stt.preflight_sent("What time is it?")  # as the stream does with a speculative transcript
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(10.0)

    # the scorer's only thread: this runs once the speculative score is done, and holds it
    blocker = asyncio.ensure_future(engine.executor.run(busy))
    assert await asyncio.to_thread(started.wait, 30.0)
    try:
        # a score asked for now would be late (the silence rule's 1.0); the early one is the
        # model's ("What time is it" scores about 0.07)
        assert THRESHOLD <= await det.predict_end_of_turn(_ctx("What time is it?")) < 0.5
        # other words (a turn of two utterances) are scored when asked: late here
        stt.preflight_sent("Daniel Fischer.")
        assert await det.predict_end_of_turn(_ctx("My name is Daniel Fischer.")) == 1.0
    finally:
        release.set()
        await blocker
