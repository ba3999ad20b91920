"""A hosted provider that fails or stalls mid-turn: the fallback answers in that same turn.

Each test drives a real ``AgentSession`` turn through the real vendor plugin, talking to the
vendor's wire-protocol fake on 127.0.0.1, which breaks off after its first tokens or bytes
(dropped connection) or goes silent with the connection open (stall). The session's speech
goes to an audio sink that records what the caller would hear.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    function_tool,
    llm,
    stt,
)
from livekit.agents.voice import io
from livekit.agents.voice.run_result import RunResult
from pydantic import SecretStr

from config.settings import LLMSettings, STTSettings, TTSSettings
from fakes.assemblyai_server import AssemblyAIFake
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake
from live.providers.fallback import (
    build_llm_with_fallback,
    build_stt_with_fallback,
    build_tts_with_fallback,
)
from live.providers.registry import ProviderContext, create
from tests.stubs import EchoLLM, ToneTTS
from tests.waiting import wait_event, wait_for

pytestmark = pytest.mark.integration

REPLY = "Hello from the fake model, we open at nine every morning."
SPOKEN = "Sure. We open at nine every morning. The bakery closes at six."
TURN_TIMEOUT = 30.0


class CaptureAudio(io.AudioOutput):
    """What the caller hears: every frame the session plays, finished as soon as flushed."""

    def __init__(self) -> None:
        super().__init__(
            label="capture", capabilities=io.AudioOutputCapabilities(pause=False), sample_rate=None
        )
        self.frames: list[rtc.AudioFrame] = []
        self._segment = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._segment += frame.samples_per_channel / frame.sample_rate

    def flush(self) -> None:
        super().flush()
        played, self._segment = self._segment, 0.0
        self.on_playback_finished(playback_position=played, interrupted=False)

    def clear_buffer(self) -> None:
        if self._segment:
            played, self._segment = self._segment, 0.0
            self.on_playback_finished(playback_position=played, interrupted=True)

    def tones(self) -> dict[int, float]:
        """Seconds heard per dominant frequency (the fakes speak 220 Hz, the local stub 330 Hz)."""
        heard: dict[int, float] = {}
        for f in self.frames:
            pcm = np.frombuffer(f.data, dtype=np.int16).astype(np.float32)
            if len(pcm) < 64 or np.abs(pcm).max() < 1000:
                continue
            spectrum = np.abs(np.fft.rfft(pcm))
            hz = round(float(np.argmax(spectrum)) * f.sample_rate / len(pcm) / 110.0) * 110
            heard[hz] = heard.get(hz, 0.0) + f.samples_per_channel / f.sample_rate
        return heard


def llm_options(fake: OpenAIFake) -> LLMSettings:
    return LLMSettings(
        provider="openai", api_key=SecretStr(fake.api_key), base_url=fake.base_url, model="m"
    )


def tts_options(fake: CartesiaFake) -> TTSSettings:
    return TTSSettings(
        provider="cartesia",
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        voice="voice-abc",
        model="sonic-2",
    )


def stt_options(fake: AssemblyAIFake) -> STTSettings:
    return STTSettings(
        provider="assemblyai",
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        model="universal-streaming",
    )


def speech(seconds: float, rate: int = 48000) -> list[rtc.AudioFrame]:
    """A caller's utterance in 20 ms frames, as a room delivers it."""
    n, step = int(seconds * rate), rate // 50
    pcm = (np.sin(np.arange(n) * 2 * np.pi * 180 / rate) * 6000).astype(np.int16)
    return [rtc.AudioFrame(pcm[i : i + step].tobytes(), rate, 1, step)
            for i in range(0, n - step + 1, step)]


def answer(result: RunResult[None]) -> str:
    msg = result.expect.next_event().is_message(role="assistant").event().item
    return msg.text_content or ""


async def run_turn(session: AgentSession, text: str) -> RunResult[None]:
    return await asyncio.wait_for(session.run(user_input=text), timeout=TURN_TIMEOUT)


@pytest.mark.parametrize("fault", ["drop", "stall"])
async def test_llm_failing_mid_answer_is_finished_by_the_fallback_in_that_turn(
    fault: str, openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    openai_fake.reply = lambda _m: REPLY
    if fault == "drop":
        openai_fake.close_after_chunks = 3  # "Hello from the", then the connection drops
    else:
        openai_fake.stall_after_chunks = 3  # "Hello from the", then silence, socket open
    openai_fake.fail_requests = 1  # the vendor is fine again afterwards
    primary = create("llm", "openai", llm_options(openai_fake), ctx)
    local = EchoLLM()
    adapter = build_llm_with_fallback(primary, local, attempt_timeout=2.0)
    try:
        async with AgentSession(llm=adapter) as session:
            await session.start(Agent(instructions="Be brief."))
            first = await run_turn(session, "when do you open")
            text = answer(first)
            # the caller got the start of the vendor's answer, then the local model's, same turn
            assert text.startswith("Hello from the")
            assert text.endswith("local model heard: when do you open")
            assert local.calls == 1
            if fault == "stall":
                assert openai_fake.stalled.is_set()

            # the session goes on (the vendor recovered: its probe succeeded, or the local
            # model answers while it is still marked down)
            second = await run_turn(session, "thanks")
            assert answer(second) in (REPLY, "local model heard: thanks")
    finally:
        await adapter.aclose()
        await primary.aclose()


@pytest.mark.parametrize("fault", ["drop", "stall"])
async def test_tts_failing_mid_speech_is_finished_by_the_fallback_voice_in_that_turn(
    fault: str,
    openai_fake: OpenAIFake,
    cartesia_fake: CartesiaFake,
    ctx: ProviderContext,
    http_ctx: None,
) -> None:
    openai_fake.reply = lambda _m: SPOKEN
    if fault == "drop":
        cartesia_fake.close_after_chunks = 3  # 0.3 s of "Sure." and the socket drops
    else:
        cartesia_fake.stall_after_chunks = 3
    cartesia_fake.fail_sockets = 1
    llm_model = create("llm", "openai", llm_options(openai_fake), ctx)
    primary = create("tts", "cartesia", tts_options(cartesia_fake), ctx)
    local = ToneTTS(sample_rate=22050)
    adapter = build_tts_with_fallback(primary, local, attempt_timeout=2.0)
    sink = CaptureAudio()
    try:
        async with AgentSession(
            llm=llm_model, tts=adapter, use_tts_aligned_transcript=True
        ) as session:
            session.output.audio = sink
            await session.start(Agent(instructions="Be brief."))
            first = await run_turn(session, "when do you open")
            assert answer(first) == SPOKEN
            heard = sink.tones()
            # the vendor's voice first, then the local voice for the rest of the same answer
            assert heard.get(220, 0) >= 0.25
            assert heard.get(330, 0) > 0.5
            assert local.texts, "the fallback voice was never asked to speak"
            said = " ".join(local.texts)
            assert "The bakery closes at six." in said
            assert "nine every morning" in said  # the sentence that was cut is said again
            if fault == "stall":
                assert cartesia_fake.stalled.is_set()

            before = len(sink.frames)
            second = await run_turn(session, "thanks")
            assert answer(second) == SPOKEN
            assert len(sink.frames) > before  # still speaking in the next turn
    finally:
        await adapter.aclose()
        await llm_model.aclose()


async def test_stt_failing_mid_utterance_the_fallback_hears_the_whole_utterance(
    ctx: ProviderContext, http_ctx: None
) -> None:
    """The first STT dies 0.6 s into a 1.2 s utterance, before any final transcript; the
    fallback (another hosted STT, so what it receives can be counted) must hear all of it."""
    async with AssemblyAIFake() as vendor, AssemblyAIFake(
        transcript="heard by the backup", turn_audio_bytes=int(1.2 * 16000) * 2 - 2 * 320
    ) as backup:
        vendor.close_after_audio_bytes = int(0.6 * 16000) * 2
        vendor.refuse_after_drop = True  # it crashed: its own reconnect is refused too
        primary = create("stt", "assemblyai", stt_options(vendor), ctx)
        secondary = create("stt", "assemblyai", stt_options(backup), ctx)
        adapter = build_stt_with_fallback(primary, secondary, attempt_timeout=5.0,
                                          retry_interval=30.0)
        switched = asyncio.Event()
        adapter.on("stt_availability_changed",
                   lambda ev: switched.set() if not ev.available else None)
        stream = adapter.stream()
        frames = speech(1.2)
        texts: list[str] = []

        async def read() -> None:
            async for ev in stream:
                if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    texts.append(ev.alternatives[0].text)

        reader = asyncio.create_task(read())
        try:
            for frame in frames[: len(frames) // 2 + 5]:  # a little more than the vendor takes
                stream.push_frame(frame)
            await asyncio.wait_for(switched.wait(), timeout=20)  # mid-utterance
            for frame in frames[len(frames) // 2 + 5 :]:  # the caller goes on talking
                stream.push_frame(frame)
            stream.end_input()
            await asyncio.wait_for(reader, timeout=30)
        finally:
            reader.cancel()
            await stream.aclose()
            await adapter.aclose()
        assert vendor.sessions and not any(s.turns_sent for s in vendor.sessions)
        assert texts == ["heard by the backup"]
        # the backup got the whole utterance: what the vendor took before it died, and after
        (session,) = backup.sessions
        assert abs(session.audio_bytes - int(1.2 * 16000) * 2) <= 16000 * 2 * 0.05


class _ToolThenFail(llm.LLM):
    """A model that sends one tool call, then loses its connection (the stream raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool] | None = None,
             conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
             **_: Any) -> llm.LLMStream:
        self.calls += 1
        return _ToolThenFailStream(self, chat_ctx=chat_ctx, tools=tools or [],
                                   conn_options=conn_options)


class _ToolThenFailStream(llm.LLMStream):
    async def _run(self) -> None:
        self._event_ch.send_nowait(llm.ChatChunk(id="t1", delta=llm.ChoiceDelta(
            role="assistant",
            tool_calls=[llm.FunctionToolCall(name="book_table", arguments='{"people": 2}',
                                             call_id="call_1")],
        )))
        raise APIConnectionError("connection lost after the tool call", retryable=True)


async def test_llm_failing_after_a_tool_call_does_not_call_the_tool_twice() -> None:
    """The tool call already went out and runs; the fallback is not asked the same request
    (it would call the tool again), only what follows the tool's result."""
    booked: list[int] = []

    class Host(Agent):
        @function_tool
        async def book_table(self, people: int) -> str:
            """Book a table.

            Args:
                people: how many people
            """
            booked.append(people)
            return "booked"

    primary, local = _ToolThenFail(), EchoLLM()
    adapter = build_llm_with_fallback(primary, local, attempt_timeout=2.0)
    try:
        async with AgentSession(llm=adapter) as session:
            await session.start(Host(instructions="Be brief."))
            result = await run_turn(session, "a table for two please")
            result.expect.next_event().is_function_call(name="book_table")
            result.expect.next_event().is_function_call_output(output="booked")
            msg = result.expect.next_event().is_message(role="assistant").event().item
    finally:
        await adapter.aclose()
    assert booked == [2]  # once (the primary's later calls are recovery probes, never served)
    assert local.calls == 1  # only for the answer after the tool's result
    assert msg.text_content == "local model heard: a table for two please"


def spoken(text: str, ctx: ProviderContext, rate: int = 48000) -> list[rtc.AudioFrame]:
    """Real speech (espeak-ng, a voice the VAD has never been tuned on) in 20 ms room frames."""
    from engines.espeak import get_espeak

    engine = get_espeak(ctx)
    pcm = np.frombuffer(engine.synthesize_sync(text, voice="en-us", words_per_minute=165), np.int16)
    resampler = rtc.AudioResampler(input_rate=engine.sample_rate, output_rate=rate, num_channels=1)
    frames = resampler.push(rtc.AudioFrame(pcm.tobytes(), engine.sample_rate, 1, pcm.size))
    frames += resampler.flush()
    data = np.concatenate([np.frombuffer(f.data, np.int16) for f in frames])
    step = rate // 50
    return [rtc.AudioFrame(data[i : i + step].tobytes(), rate, 1, step)
            for i in range(0, data.size - step + 1, step)]


def quiet(seconds: float, rate: int = 48000) -> list[rtc.AudioFrame]:
    step = rate // 50
    return [rtc.AudioFrame(bytes(2 * step), rate, 1, step) for _ in range(int(seconds * 50))]


class Mic(io.AudioInput):
    """The caller's microphone track, as the session reads it: frames the test pushes."""

    def __init__(self) -> None:
        super().__init__(label="test-mic")
        self.queue: asyncio.Queue[rtc.AudioFrame] = asyncio.Queue()

    async def __anext__(self) -> rtc.AudioFrame:
        return await self.queue.get()


def listening_session(adapter: Any, ctx: ProviderContext) -> tuple[AgentSession, Mic]:
    """A session whose own VAD hears the mic and whose STT is ``adapter``, following it."""
    from live.providers.local.turn_models import get_vad

    session: AgentSession = AgentSession(
        stt=adapter, llm=EchoLLM(), vad=get_vad(ctx), turn_handling={"turn_detection": "vad"}
    )
    adapter.follow(session)  # as the worker does: the stall guard uses this session's VAD
    mic = Mic()
    session.input.audio = mic
    return session, mic


async def talk(mic: Mic, frames: list[rtc.AudioFrame]) -> None:
    """Frames at a room's pace (the session's VAD dates speech by the clock), then quiet
    audio goes on flowing while the caller waits for an answer, as in a room."""
    for i in range(0, len(frames), 5):
        for frame in frames[i : i + 5]:
            mic.queue.put_nowait(frame)
        await asyncio.sleep(0.1)  # a room's pace, not a wait for anything
    while True:
        for frame in quiet(0.2):
            mic.queue.put_nowait(frame)
        await asyncio.sleep(0.2)


async def test_stt_that_stalls_is_replaced_once_the_caller_has_stopped_speaking(
    ctx: ProviderContext, http_ctx: None
) -> None:
    """AssemblyAI keeps its socket open and stops answering half a second into the caller's
    question (no error, nothing to time out on). The session's VAD hears the caller stop; no
    transcript comes within the stall time, so the fallback takes over and hears the whole
    question."""
    question = spoken("When do you open tomorrow morning?", ctx)
    question_bytes = len(question) * 320 * 2  # at 16 kHz, what the plugin sends
    async with AssemblyAIFake() as vendor, AssemblyAIFake(
        transcript="heard by the backup", turn_audio_bytes=question_bytes // 2
    ) as backup:
        vendor.stall_after_audio_bytes = int(0.5 * 16000) * 2
        primary = create("stt", "assemblyai", stt_options(vendor), ctx)
        secondary = create("stt", "assemblyai", stt_options(backup), ctx)
        adapter = build_stt_with_fallback(primary, secondary, attempt_timeout=5.0,
                                          retry_interval=30.0, stall_seconds=1.0)
        switched = asyncio.Event()
        adapter.on("stt_availability_changed",
                   lambda ev: switched.set() if not ev.available else None)
        session, mic = listening_session(adapter, ctx)
        states: list[str] = []
        session.on("user_state_changed", lambda ev: states.append(ev.new_state))
        texts: list[str] = []
        heard = asyncio.Event()

        def transcribed(ev: Any) -> None:
            if ev.is_final:
                texts.append(ev.transcript)
                heard.set()

        session.on("user_input_transcribed", transcribed)
        await session.start(Agent(instructions="Be brief."))
        feeder: asyncio.Task[None] | None = None
        try:
            feeder = asyncio.create_task(talk(mic, quiet(0.3) + question))
            await wait_event(switched, "the switch to the fallback", timeout=30)
            # the session's VAD told the guard: the caller spoke, then stopped
            assert states[:2] == ["speaking", "listening"], states
            await wait_event(heard, "the fallback's transcript")
        finally:
            if feeder is not None:
                feeder.cancel()
            await session.aclose()
            await adapter.aclose()
        assert vendor.sessions and not any(s.turns_sent for s in vendor.sessions)
        assert texts[0] == "heard by the backup"
        (backup_session,) = backup.sessions
        assert backup_session.audio_bytes >= question_bytes * 0.95  # the whole question, replayed


async def test_stt_quiet_because_the_caller_is_quiet_is_not_a_stall(
    ctx: ProviderContext, http_ctx: None
) -> None:
    """Streaming STTs say nothing while nobody speaks: seconds of quiet must not switch."""
    async with AssemblyAIFake(turn_audio_bytes=10**9) as vendor, AssemblyAIFake() as backup:
        primary = create("stt", "assemblyai", stt_options(vendor), ctx)
        secondary = create("stt", "assemblyai", stt_options(backup), ctx)
        adapter = build_stt_with_fallback(primary, secondary, attempt_timeout=5.0,
                                          retry_interval=30.0, stall_seconds=0.5)
        changes: list[bool] = []
        adapter.on("stt_availability_changed", lambda ev: changes.append(ev.available))
        session, mic = listening_session(adapter, ctx)
        await session.start(Agent(instructions="Be brief."))
        try:
            for frame in quiet(3.0):
                mic.queue.put_nowait(frame)
            # everything pushed reached the vendor (a switch would have happened by then)
            await asyncio.to_thread(
                wait_for,
                lambda: sum(s.audio_bytes for s in vendor.sessions) >= 3 * 16000 * 2 * 0.95,
                20, "the vendor to receive the quiet")
        finally:
            await session.aclose()
            await adapter.aclose()
        assert changes == [] and not backup.sessions


async def test_a_short_sound_is_not_speech_that_needs_words(
    ctx: ProviderContext, http_ctx: None
) -> None:
    """A click or a cough (here a word cut to 0.25 s) may rightly get no transcript: the
    session's VAD reports it, but it is too short to call a silent STT stalled."""
    cough = spoken("Hello", ctx)[: int(0.25 * 50)]
    async with AssemblyAIFake(turn_audio_bytes=10**9) as vendor, AssemblyAIFake() as backup:
        primary = create("stt", "assemblyai", stt_options(vendor), ctx)
        secondary = create("stt", "assemblyai", stt_options(backup), ctx)
        adapter = build_stt_with_fallback(primary, secondary, attempt_timeout=5.0,
                                          retry_interval=30.0, stall_seconds=0.5)
        changes: list[bool] = []
        adapter.on("stt_availability_changed", lambda ev: changes.append(ev.available))
        session, mic = listening_session(adapter, ctx)
        states: list[str] = []
        session.on("user_state_changed", lambda ev: states.append(ev.new_state))
        await session.start(Agent(instructions="Be brief."))
        feeder = asyncio.create_task(talk(mic, quiet(0.3) + cough))
        try:
            # 3 s of quiet after it reached the vendor (a switch would have happened by then)
            await asyncio.to_thread(
                wait_for,
                lambda: sum(s.audio_bytes for s in vendor.sessions) >= 3.5 * 16000 * 2,
                20, "the vendor to receive the audio")
        finally:
            feeder.cancel()
            await session.aclose()
            await adapter.aclose()
        assert states[:2] == ["speaking", "listening"], states  # the VAD did hear it
        assert changes == [] and not backup.sessions


async def test_a_vendor_that_answers_before_the_vad_has_heard_the_end_is_not_stalled(
    ctx: ProviderContext, http_ctx: None
) -> None:
    """A quick vendor sends its final transcript as the caller stops, before the session's
    VAD has waited out its closing silence: it answered, so it is alive (the load benchmark's
    fake, 150 ms after the speech, was switched away from in every session before)."""
    question = spoken("When do you open tomorrow morning?", ctx)
    question_bytes = len(question) * 320 * 2
    async with AssemblyAIFake(
        transcript="when do you open tomorrow morning", turn_audio_bytes=question_bytes + 320 * 2
    ) as vendor, AssemblyAIFake() as backup:
        primary = create("stt", "assemblyai", stt_options(vendor), ctx)
        secondary = create("stt", "assemblyai", stt_options(backup), ctx)
        adapter = build_stt_with_fallback(primary, secondary, attempt_timeout=5.0,
                                          retry_interval=30.0, stall_seconds=0.5)
        changes: list[bool] = []
        adapter.on("stt_availability_changed", lambda ev: changes.append(ev.available))
        session, mic = listening_session(adapter, ctx)
        states: list[str] = []
        session.on("user_state_changed", lambda ev: states.append(ev.new_state))
        finals: list[str] = []
        session.on("user_input_transcribed",
                   lambda ev: finals.append(ev.transcript) if ev.is_final else None)
        await session.start(Agent(instructions="Be brief."))
        feeder = asyncio.create_task(talk(mic, quiet(0.3) + question))
        try:
            # the vendor's answer, then 2 s of quiet (four times the stall time)
            await asyncio.to_thread(
                wait_for,
                lambda: sum(s.audio_bytes for s in vendor.sessions)
                >= question_bytes + 2.3 * 16000 * 2,
                30, "the vendor to receive the question and the quiet after it")
        finally:
            feeder.cancel()
            await session.aclose()
            await adapter.aclose()
        assert states[:2] == ["speaking", "listening"], states
        assert finals and finals[0] == "when do you open tomorrow morning"
        assert changes == [] and not backup.sessions
