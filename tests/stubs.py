"""Small in-process LiveKit STT/LLM/TTS used as the *secondary* of fallback tests.

They stand in for the local providers (Whisper, SmolLM2, Piper) where loading models would
only slow the test down: what is under test is that the FallbackAdapter switches to them.
"""

from __future__ import annotations

from typing import Any

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
    llm,
    stt,
    tts,
    utils,
)
from livekit.agents.llm.tool_context import Tool, ToolChoice
from livekit.agents.utils import AudioBuffer

from fakes.cartesia_server import tone


class ScriptedSTT(stt.STT):
    """Streaming STT: after ``seconds`` of audio, one final transcript of ``text``."""

    def __init__(self, text: str = "hello from the local transcriber", seconds: float = 0.5):
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self.text = text
        self.seconds = seconds

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "local"

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return self._final()

    def _final(self) -> stt.SpeechEvent:
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language="en", text=self.text)],  # type: ignore[arg-type]
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _ScriptedStream(stt=self, conn_options=conn_options)


class _ScriptedStream(stt.RecognizeStream):
    def __init__(self, *, stt: ScriptedSTT, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._scripted = stt

    async def _run(self) -> None:
        heard = 0.0
        async for data in self._input_ch:
            if not isinstance(data, rtc.AudioFrame):
                continue
            heard += data.duration
            if heard >= self._scripted.seconds:
                heard = 0.0
                self._event_ch.send_nowait(
                    stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH)
                )
                self._event_ch.send_nowait(self._scripted._final())
                self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))


class EchoLLM(llm.LLM):
    """Answers ``"<prefix> <last user message>"`` with usage, like a local model would."""

    def __init__(self, prefix: str = "local model heard:") -> None:
        super().__init__()
        self.prefix = prefix
        self.calls = 0

    @property
    def model(self) -> str:
        return "echo"

    @property
    def provider(self) -> str:
        return "local"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.calls += 1
        return _EchoStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _EchoStream(llm.LLMStream):
    def __init__(
        self,
        echo: EchoLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(echo, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._echo = echo

    async def _run(self) -> None:
        last = ""
        for item in self._chat_ctx.items:
            if item.type == "message" and item.role == "user":
                last = item.text_content or ""
        text = f"{self._echo.prefix} {last}"
        rid = utils.shortuuid("echo_")
        self._event_ch.send_nowait(
            llm.ChatChunk(id=rid, delta=llm.ChoiceDelta(role="assistant", content=text))
        )
        n = len(text.split())
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=rid,
                usage=llm.CompletionUsage(completion_tokens=n, prompt_tokens=n, total_tokens=2 * n),
            )
        )


class ToneTTS(tts.TTS):
    """Non-streaming TTS at 22050 Hz (like Piper), so the fallback must resample and adapt."""

    def __init__(self, sample_rate: int = 22050, seconds_per_char: float = 0.03) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.seconds_per_char = seconds_per_char
        self.calls = 0
        self.texts: list[str] = []  # what it was asked to say, in order

    @property
    def model(self) -> str:
        return "tone"

    @property
    def provider(self) -> str:
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        self.calls += 1
        self.texts.append(text)
        return _ToneStream(tts=self, input_text=text, conn_options=conn_options)


class _ToneStream(tts.ChunkedStream):
    def __init__(self, *, tts: ToneTTS, input_text: str, conn_options: APIConnectOptions):
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tone = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._tone.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        seconds = max(0.1, len(self._input_text) * self._tone.seconds_per_char)
        output_emitter.push(tone(seconds, self._tone.sample_rate, freq=330.0))
        output_emitter.flush()
