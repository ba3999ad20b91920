"""Fallback chains: a hosted slot backed by a local one, so an outage degrades the voice only.

STT, LLM and TTS use LiveKit Agents' own ``FallbackAdapter`` classes, which switch to the next
instance when one raises (connect failure, 5xx, socket closed, timeout) and probe the failed
one in the background until it recovers. Avatars are started once per session, so their chain
is simply tried in order at start.

Out of the box the adapters lose what was under way when a provider fails mid-turn: the LLM
and TTS adapters give up on a turn whose provider fails *after* its first tokens or audio
(the caller hears half an answer, then silence), and the STT adapter's next STT never hears
the words said before the switch. ``LLMFallback``, ``TTSFallback`` and ``STTFallback`` finish
that turn with the fallback instead: the LLM's fallback answers the same request (after a
short break in the text), the TTS's fallback says the rest of the text from the sentence that
was cut, the STT's fallback first hears the utterance in progress again.

An avatar that runs as its own participant (a hosted vendor's worker, or the local renderer in
participant mode) receives the agent's speech over a data stream and reports when it has played
it. If that participant leaves mid-session nobody reports any more, and the agent would wait
for the playback forever. ``watch_avatar`` (started by ``start_avatar_with_fallback``) notices
the departure, gives the agent its own audio track back and ends any wait for the lost avatar.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import (
    NOT_GIVEN,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    CloseEvent,
    UserStateChangedEvent,
    llm,
    stt,
    tts,
    utils,
)
from livekit.agents.llm.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS as DEFAULT_FALLBACK_LLM_OPTIONS,
)
from livekit.agents.llm.fallback_adapter import FallbackLLMStream
from livekit.agents.stt.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS as DEFAULT_FALLBACK_STT_OPTIONS,
)
from livekit.agents.stt.fallback_adapter import FallbackRecognizeStream
from livekit.agents.tts.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS as DEFAULT_FALLBACK_TTS_OPTIONS,
)
from livekit.agents.tts.fallback_adapter import (
    AvailabilityChangedEvent,
    FallbackChunkedStream,
    FallbackSynthesizeStream,
)
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, NotGivenOr, TimedString
from livekit.agents.vad import VAD
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.io import AudioOutput
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF, AudioOutputOptions

from live.lk_compat import (
    RoomAudioOutput,
    datastream_destination,
    new_room_audio_output,
    pending_playback_count,
    room_audio_publication,
    silence_clear_buffer,
)
from live.providers.lazy import ensure_loaded
from live.providers.registry import ProviderError

logger = logging.getLogger(__name__)

NO_AVATAR = "none"
# How much of the caller's latest audio an STT taking over mid-utterance is given again.
REPLAY_SECONDS = 15.0
# A streaming STT that says nothing this long after the session's VAD heard the caller stop
# speaking (at least STALL_MIN_SPEECH_SECONDS of speech: a click or a cough may rightly get no
# words) has stalled with its connection open; the adapter then switches as on a failure.
STALL_SECONDS = 4.0
STALL_MIN_SPEECH_SECONDS = 0.4
# What shows the STT is alive after the caller stopped (usage reports come from the plugin's
# own count of the audio sent, not from the vendor).
_STT_ANSWERS = frozenset({
    stt.SpeechEventType.INTERIM_TRANSCRIPT,
    stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
    stt.SpeechEventType.FINAL_TRANSCRIPT,
    stt.SpeechEventType.END_OF_SPEECH,
})
# What shows the STT has finished an utterance (interims alone do not: it may stall after).
_STT_FINALS = frozenset({stt.SpeechEventType.FINAL_TRANSCRIPT, stt.SpeechEventType.END_OF_SPEECH})


class _WrappedSTT(stt.STT):
    """An adapter member that is another STT with a different ``stream()``."""

    def __init__(self, inner: stt.STT) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._inner = inner
        self._label = inner.label

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def provider(self) -> str:
        return self._inner.provider

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return await self._inner.recognize(buffer, language=language, conn_options=conn_options)


class _StallGuard(_WrappedSTT):
    """A streaming STT that fails with ``APIConnectionError`` when it gives no transcript
    ``stall_seconds`` after the caller stopped speaking.

    A vendor that keeps its socket open and stops answering raises nothing, and streaming
    STTs are quiet while the caller is, so silence alone proves nothing; the session's own
    VAD tells a stall from a quiet caller. Its view arrives as the session's public
    ``user_state_changed`` events (``follow``), so no second VAD runs on the caller's audio.
    """

    def __init__(self, inner: stt.STT, stall_seconds: float) -> None:
        super().__init__(inner)
        self._stall = stall_seconds
        self._session: AgentSession | None = None
        self._streams: set[_GuardedStream] = set()
        self._speech_began: float | None = None

    def follow(self, session: AgentSession) -> None:
        """Take the caller's speech from ``session``'s VAD (until then nothing is a stall)."""
        if self._session is not None:
            self._session.off("user_state_changed", self._on_user_state)
        self._session = session
        session.on("user_state_changed", self._on_user_state)

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._speech_began = ev.created_at
            for stream in list(self._streams):
                stream.speech_started()
            return
        began, self._speech_began = self._speech_began, None
        if ev.old_state != "speaking" or began is None:
            return
        # LiveKit dates both events by the VAD's own reckoning (the start of the speech, the
        # end of it before the closing silence): their distance is how long the caller spoke
        if ev.created_at - began >= STALL_MIN_SPEECH_SECONDS:
            for stream in list(self._streams):
                stream.speech_ended()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_STT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _GuardedStream(
            guard=self,
            inner=self._inner.stream(language=language, conn_options=conn_options),
            conn_options=dataclasses.replace(conn_options, max_retry=0),
        )


class _GuardedStream(stt.RecognizeStream):
    def __init__(
        self, *, guard: _StallGuard, inner: stt.RecognizeStream, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(stt=guard, conn_options=conn_options)
        self._guard = guard
        self._inner = inner
        self.speech_started: Callable[[], None] = lambda: None  # the session's VAD says
        self.speech_ended: Callable[[], None] = lambda: None

    async def _run(self) -> None:
        inner = self._inner
        deadline: float | None = None  # loop time by which the STT must have said something
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        finished = False  # the STT ended the caller's utterance (a final) since it began

        def speech_started() -> None:
            nonlocal finished
            finished = False

        def speech_ended() -> None:
            nonlocal deadline
            # the VAD knows the end only after its closing silence: a quick vendor may have
            # sent its final already (then it is alive), else it has ``stall`` from now on
            if deadline is None and not finished:
                deadline = loop.time() + self._guard._stall
                changed.set()

        self.speech_started, self.speech_ended = speech_started, speech_ended

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    inner.flush()
                    continue
                inner.push_frame(data)
            inner.end_input()

        async def forward_events() -> None:
            nonlocal deadline, finished
            async for ev in inner:
                self._event_ch.send_nowait(ev)
                if ev.type in _STT_FINALS:
                    finished = True
                if ev.type in _STT_ANSWERS and deadline is not None:
                    deadline = None
                    changed.set()

        async def watchdog() -> None:
            while True:
                changed.clear()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                if deadline is not None and loop.time() >= deadline:
                    raise APIConnectionError(
                        f"{self._guard.label} sent no transcript {self._guard._stall:.0f} s "
                        "after the caller stopped speaking (stalled)",
                        retryable=False,
                    )

        tasks = [asyncio.create_task(forward_input(), name="stt-guard-input"),
                 asyncio.create_task(forward_events(), name="stt-guard-events")]
        guard = asyncio.create_task(watchdog(), name="stt-guard-watchdog")
        self._guard._streams.add(self)
        try:
            done, _ = await asyncio.wait([tasks[1], guard], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the inner stream's error, or the stall
        finally:
            self._guard._streams.discard(self)
            await utils.aio.cancel_and_wait(*tasks, guard)
            await inner.aclose()


def build_stt_with_fallback(
    primary: stt.STT,
    fallback: stt.STT,
    *,
    vad: VAD | None = None,
    attempt_timeout: float = 10.0,
    max_retry_per_stt: int = 1,
    retry_interval: float = 5.0,
    replay_seconds: float = REPLAY_SECONDS,
    stall_seconds: float = STALL_SECONDS,
) -> STTFallback:
    """Streaming STT that switches to ``fallback`` when ``primary`` fails, even mid-utterance.

    The adapter is streaming; a non-streaming member (e.g. a local Whisper) is wrapped in
    ``stt.StreamAdapter``, which needs the session's VAD to cut utterances. Once the adapter
    follows its session (``STTFallback.follow``), a streaming primary that stops answering
    (``stall_seconds`` after the caller stopped speaking) counts as failed too.
    """
    batch_only = [s.label for s in (primary, fallback) if not s.capabilities.streaming]
    if batch_only and vad is None:
        raise ProviderError(
            f"stt fallback needs a VAD: {', '.join(batch_only)} cannot stream on its own"
        )
    return STTFallback(
        [primary, fallback],
        vad=vad,
        attempt_timeout=attempt_timeout,
        max_retry_per_stt=max_retry_per_stt,
        retry_interval=retry_interval,
        replay_seconds=replay_seconds,
        stall_seconds=stall_seconds,
    )


class _AudioTail:
    """The audio of the utterance in progress: what a fallback STT must hear again.

    Frames are kept from the last final transcript on (at most ``max_seconds``); those still
    waiting in the adapter's input channel are not replayed, the adapter forwards them itself.
    """

    def __init__(self, max_seconds: float) -> None:
        self._max = max_seconds
        self._frames: collections.deque[rtc.AudioFrame] = collections.deque()
        self._seconds = 0.0
        self._pending: Callable[[], int] = lambda: 0

    def bind(self, pending: Callable[[], int]) -> None:
        self._pending = pending

    def push(self, frame: rtc.AudioFrame) -> None:
        self._frames.append(frame)
        self._seconds += frame.samples_per_channel / frame.sample_rate
        while self._seconds > self._max and len(self._frames) > 1:
            old = self._frames.popleft()
            self._seconds -= old.samples_per_channel / old.sample_rate

    def clear(self) -> None:
        self._frames.clear()
        self._seconds = 0.0

    def unheard(self) -> list[rtc.AudioFrame]:
        frames = list(self._frames)
        pending = self._pending()
        return frames[: len(frames) - pending] if pending else frames


_CURRENT_TAIL: contextvars.ContextVar[_AudioTail | None] = contextvars.ContextVar(
    "stt_fallback_tail", default=None
)


class _ReplayOnSwitch(_WrappedSTT):
    """A fallback STT whose new stream first hears the utterance the failed STT was cut in."""

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_STT_OPTIONS,
    ) -> stt.RecognizeStream:
        stream = self._inner.stream(language=language, conn_options=conn_options)
        tail = _CURRENT_TAIL.get()
        frames = tail.unheard() if tail is not None else []
        if frames:
            seconds = sum(f.samples_per_channel / f.sample_rate for f in frames)
            logger.warning(
                "stt %s takes over mid-utterance: replaying the last %.1f s",
                self.label,
                seconds,
                extra={"stt": self.label, "replayed_seconds": round(seconds, 2)},
            )
            for frame in frames:
                stream.push_frame(frame)
        return stream

    def _update_session_keyterms(self, keyterms: list[str]) -> None:
        self._inner._update_session_keyterms(keyterms)

    def _push_conversation_item(self, ev: Any) -> None:
        self._inner._push_conversation_item(ev)

    def prewarm(self) -> None:
        self._inner.prewarm()

    async def aclose(self) -> None:
        await self._inner.aclose()


class STTFallback(stt.FallbackAdapter):
    """``stt.FallbackAdapter`` whose fallback hears the whole utterance the primary was cut in.

    LiveKit's adapter gives the next STT only the audio that arrives after the switch: words
    said before a mid-utterance failure are lost, and so may be the whole turn. Here each
    stream keeps the audio since its last final transcript (``replay_seconds`` at most) and
    the fallback's new stream gets it first.
    """

    def __init__(
        self,
        stt_instances: list[stt.STT],
        *,
        vad: VAD | None = None,
        attempt_timeout: float = 10.0,
        max_retry_per_stt: int = 1,
        retry_interval: float = 5.0,
        replay_seconds: float = REPLAY_SECONDS,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        super().__init__(
            stt_instances,
            vad=vad,
            attempt_timeout=attempt_timeout,
            max_retry_per_stt=max_retry_per_stt,
            retry_interval=retry_interval,
        )
        self._replay_seconds = replay_seconds
        # the adapter's members (StreamAdapter-wrapped where needed): the first watched for a
        # stall once the session's VAD can tell (a StreamAdapter-wrapped one answers each VAD
        # utterance with one request, timed by attempt_timeout), the others replay the
        # utterance
        first = self._stt_instances[0]
        self._guard: _StallGuard | None = None
        if stall_seconds > 0 and stt_instances[0].capabilities.streaming:
            first = self._guard = _StallGuard(first, stall_seconds)
        self._stt_instances = [first, *(_ReplayOnSwitch(s) for s in self._stt_instances[1:])]

    def follow(self, session: AgentSession) -> None:
        """Watch the primary for a stall with ``session``'s VAD (its ``user_state_changed``)."""
        if self._guard is not None:
            self._guard.follow(session)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_STT_OPTIONS,
    ) -> stt.RecognizeStream:
        tail = _AudioTail(self._replay_seconds)
        # the stream's task starts in its constructor and keeps this context: members it
        # opens later (on a switch) find the tail there
        token = _CURRENT_TAIL.set(tail)
        try:
            return _STTFallbackStream(
                stt=self, language=language, conn_options=conn_options, tail=tail
            )
        finally:
            _CURRENT_TAIL.reset(token)


class _STTFallbackStream(FallbackRecognizeStream):
    def __init__(
        self,
        *,
        stt: STTFallback,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
        tail: _AudioTail,
    ) -> None:
        super().__init__(stt=stt, language=language, conn_options=conn_options)
        self._tail = tail
        tail.bind(self._input_ch.qsize)

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        super().push_frame(frame)  # no resampling here: one frame in the channel per push
        self._tail.push(frame)

    async def __anext__(self) -> stt.SpeechEvent:
        ev = await super().__anext__()
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            self._tail.clear()  # that utterance was heard
        return ev


def build_llm_with_fallback(
    primary: llm.LLM,
    fallback: llm.LLM,
    *,
    attempt_timeout: float = 10.0,
    max_retry_per_llm: int = 0,
    retry_interval: float = 0.5,
) -> LLMFallback:
    """LLM that answers from ``fallback`` when ``primary`` fails, even mid-answer.

    ``attempt_timeout`` bounds the wait for each token, so a vendor that stalls with the
    connection open counts as failed after it.
    """
    return LLMFallback(
        [primary, fallback],
        attempt_timeout=attempt_timeout,
        max_retry_per_llm=max_retry_per_llm,
        retry_interval=retry_interval,
    )


# Put between the words a failed LLM already produced and the fallback's answer, so the two do
# not run together in the speech and the stored transcript.
LLM_SWITCH_BREAK = " ... "


class LLMFallback(llm.FallbackAdapter):
    """``llm.FallbackAdapter`` that lets the fallback answer when the primary fails mid-answer.

    LiveKit's adapter raises then (``retry_on_chunk_sent`` off) and the turn ends on half a
    sentence; with it on, the fallback's answer is glued to the cut words. Here the fallback
    answers the same request after ``LLM_SWITCH_BREAK``: the caller hears the start of the
    first answer, a pause, and a whole answer.
    """

    def __init__(
        self,
        llm_instances: list[llm.LLM],
        *,
        attempt_timeout: float = 10.0,
        max_retry_per_llm: int = 0,
        retry_interval: float = 0.5,
    ) -> None:
        super().__init__(
            llm_instances,
            attempt_timeout=attempt_timeout,
            max_retry_per_llm=max_retry_per_llm,
            retry_interval=retry_interval,
            retry_on_chunk_sent=True,
        )

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_LLM_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _LLMFallbackStream(
            llm=self,
            conn_options=conn_options,
            chat_ctx=chat_ctx,
            tools=tools or [],
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )


class _LLMFallbackStream(FallbackLLMStream):
    _words_sent: bool = False  # an earlier attempt of this request produced text
    _tools_called: bool = False  # ... or a tool call, which the agent runs anyway

    async def _try_generate(
        self, *, llm: llm.LLM, check_recovery: bool = False
    ) -> AsyncIterable[llm.ChatChunk]:
        if check_recovery:
            async for chunk in super()._try_generate(llm=llm, check_recovery=True):
                yield chunk
            return
        if self._tools_called:
            # the failed model's tool call went out and will run: a second model answering
            # the same request would call it again. The turn goes on from the tool's result.
            logger.warning(
                "llm failed after a tool call; not asking %s again", llm.label,
                extra={"llm": llm.label},
            )
            return
        switched = self._words_sent
        async for chunk in super()._try_generate(llm=llm, check_recovery=False):
            delta = chunk.delta
            if delta is not None and delta.tool_calls:
                self._tools_called = True
            if delta is not None and delta.content:
                if switched:
                    switched = False
                    logger.warning(
                        "llm %s answers a turn another model left unfinished",
                        llm.label,
                        extra={"llm": llm.label},
                    )
                    delta.content = LLM_SWITCH_BREAK + delta.content.lstrip()
                self._words_sent = True
            yield chunk


def build_tts_with_fallback(
    primary: tts.TTS,
    fallback: tts.TTS,
    *,
    max_retry_per_tts: int = 1,
    sample_rate: int | None = None,
    attempt_timeout: float = 10.0,
) -> TTSFallback:
    """TTS that speaks with ``fallback`` when ``primary`` fails, even mid-sentence.

    The adapter resamples every member to one rate (``sample_rate``, default the highest), but
    cannot mix channel counts. ``attempt_timeout`` bounds each wait on the provider (connect,
    and each message of a stream), so a stall counts as a failure after it.
    """
    if primary.num_channels != fallback.num_channels:
        raise ProviderError(
            f"tts fallback: {primary.label} has {primary.num_channels} channel(s), "
            f"{fallback.label} has {fallback.num_channels}"
        )
    return TTSFallback(
        [primary, fallback],
        max_retry_per_tts=max_retry_per_tts,
        sample_rate=sample_rate,
        attempt_timeout=attempt_timeout,
    )


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def unspoken_text(text: str, words_spoken: int) -> str:
    """The part of ``text`` still to say after ``words_spoken`` words were heard.

    It restarts at the sentence that was cut, so the fallback voice says whole sentences.
    """
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    done = 0
    for i, sentence in enumerate(sentences):
        done += len(sentence.split())
        if done > words_spoken:
            return " ".join(sentences[i:])
    return ""


class TTSFallback(tts.FallbackAdapter):
    """``tts.FallbackAdapter`` that finishes a turn whose voice fails after its first audio.

    LiveKit's adapter drops the rest of the segment then ("already synthesized of audio,
    ignoring the current segment"). Here the next voice says what was not heard yet: from the
    sentence that was cut, judged by the word timings the failed voice sent (Cartesia sends
    them); a voice that sends none is repeated from the start of the segment. The session's
    transcript, made of the voices' word timings, holds the answer once: the words of the cut
    sentence the failed voice had said are not timed again when the next voice repeats them.
    """

    def __init__(
        self,
        tts_instances: list[tts.TTS],
        *,
        max_retry_per_tts: int = 1,
        sample_rate: int | None = None,
        attempt_timeout: float = 10.0,
    ) -> None:
        super().__init__(tts_instances, max_retry_per_tts=max_retry_per_tts, sample_rate=sample_rate)
        self._attempt_timeout = attempt_timeout

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_FALLBACK_TTS_OPTIONS
    ) -> FallbackSynthesizeStream:
        opts = dataclasses.replace(conn_options, timeout=self._attempt_timeout)
        return _TTSFallbackStream(tts=self, conn_options=opts)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_FALLBACK_TTS_OPTIONS
    ) -> FallbackChunkedStream:
        return _TTSFallbackChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class _TTSFallbackChunkedStream(FallbackChunkedStream):
    async def _try_synthesize(
        self, *, tts: tts.TTS, recovering: bool = False
    ) -> AsyncGenerator[tts.SynthesizedAudio, None]:
        await ensure_loaded(tts)  # a local voice not loaded yet: in a thread
        async for audio in super()._try_synthesize(tts=tts, recovering=recovering):
            yield audio


class _TTSFallbackStream(FallbackSynthesizeStream):
    async def _try_synthesize(  # type: ignore[override]
        self,
        *,
        tts: tts.TTS,
        input_ch: utils.aio.ChanReceiver[str | tts.SynthesizeStream._FlushSentinel],
        conn_options: APIConnectOptions,
        recovering: bool = False,
    ) -> AsyncGenerator[tts.SynthesizedAudio, None]:
        await ensure_loaded(tts)  # a local voice not loaded yet: in a thread, the loop goes on
        inner = super()._try_synthesize(
            tts=tts, input_ch=input_ch, conn_options=conn_options, recovering=recovering
        )
        if recovering:
            async for audio in inner:
                yield audio
            return
        heard = 0.0  # seconds of this voice the caller got
        words = 0  # words the voice reported as spoken (timed transcript)
        last = ""  # the last of them, as the transcript has it
        try:
            async for audio in inner:
                heard += audio.frame.samples_per_channel / audio.frame.sample_rate
                for t in audio.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or ():
                    words += len(str(t).split())
                    last = str(t) or last
                yield audio
            return
        except Exception:
            if heard == 0.0 or (nxt := self._next_voice(tts)) is None:
                raise  # nothing heard yet: the adapter itself moves to the next voice
        # the input is still arriving from the LLM: the rest of the text is needed first
        async for _ in input_ch:
            pass
        text = "".join(self._pushed_tokens)
        rest = unspoken_text(text, words)
        # words of the cut sentence the failed voice already said (and captioned): the next
        # voice says them again, the transcript keeps them once
        said_again = max(0, words - (len(text.split()) - len(rest.split())))
        self._mark_failed(tts)
        logger.warning(
            "tts %s failed mid-speech after %.1f s; %s says the rest",
            tts.label,
            heard,
            nxt.label,
            extra={"tts": tts.label, "fallback": nxt.label, "words_heard": words},
        )
        if not rest:
            return
        # voices space their words differently (" We" from Cartesia, "We " from Piper)
        space = bool(last) and not last[-1].isspace()
        async for audio in self._continue_with(
            nxt, rest, tts.sample_rate, conn_options, heard, said_again, space
        ):
            yield audio

    def _next_voice(self, failed: tts.TTS) -> tts.TTS | None:
        adapter = self._fallback_adapter
        members = adapter._tts_instances
        for i in range(members.index(failed) + 1, len(members)):
            if adapter._status[i].available:
                return members[i]
        return None

    def _mark_failed(self, failed: tts.TTS) -> None:
        """What the adapter does for a failure it sees: mark it down, probe it in the background."""
        adapter = self._fallback_adapter
        status = adapter._status[adapter._tts_instances.index(failed)]
        if status.available:
            status.available = False
            adapter.emit("tts_availability_changed", AvailabilityChangedEvent(tts=failed, available=False))
        self._try_recovery(failed)

    async def _continue_with(
        self,
        voice: tts.TTS,
        text: str,
        rate: int,
        conn_options: APIConnectOptions,
        offset: float,
        said_again: int = 0,
        space: bool = False,
    ) -> AsyncGenerator[tts.SynthesizedAudio, None]:
        """``voice`` says ``text``, resampled to the failed voice's ``rate`` (the adapter's
        caller resamples from there), its word timings moved after what was already heard,
        without its first ``said_again`` words (already in the transcript) and, if ``space``,
        a space before its first word (the transcript so far ends in a word)."""
        await ensure_loaded(voice)
        ch = utils.aio.Chan[str | tts.SynthesizeStream._FlushSentinel]()
        ch.send_nowait(text)
        ch.close()
        resampler = (
            rtc.AudioResampler(input_rate=voice.sample_rate, output_rate=rate)
            if voice.sample_rate != rate
            else None
        )
        request_id = utils.shortuuid()
        # The session's transcript is made of the word timings the frames carry. A resampler
        # may hold a whole small frame back (no output for it yet): its words then ride on
        # the next frame out, never dropped with it.
        words: list[Any] = []

        def carry(frame: rtc.AudioFrame) -> tts.SynthesizedAudio:
            nonlocal words
            if words:
                frame.userdata[USERDATA_TIMED_TRANSCRIPT] = words
                words = []
            return tts.SynthesizedAudio(frame=frame, request_id=request_id)

        async for audio in super()._try_synthesize(
            tts=voice, input_ch=ch, conn_options=conn_options, recovering=False
        ):
            timed = audio.frame.userdata.pop(USERDATA_TIMED_TRANSCRIPT, None) or []
            timed, said_again = _drop_words(timed, said_again)
            if space and timed and str(timed[0]).strip():
                space = False
                if not str(timed[0])[0].isspace():
                    timed[0] = _retext(timed[0], " " + str(timed[0]))
            words += [_shift(t, offset) for t in timed]
            frames = resampler.push(audio.frame) if resampler is not None else [audio.frame]
            if resampler is not None and audio.is_final:
                frames += resampler.flush()
            for frame in frames:
                yield carry(frame)
        if resampler is not None:
            for frame in resampler.flush():
                yield carry(frame)
        if words:  # words after the last audio: a 10 ms silence carries them, as LiveKit's does
            n = rate // 100
            yield carry(rtc.AudioFrame(b"\0\0" * n * voice.num_channels, rate, voice.num_channels, n))


def _drop_words(timed: list[Any], n: int) -> tuple[list[Any], int]:
    """``timed`` without its first ``n`` words; the words still to drop after it."""
    out: list[Any] = []
    for t in timed:
        s = str(t)
        count = len(s.split())
        if n == 0:
            out.append(t)
        elif count <= n:  # spaces between dropped words go with them
            n -= count
        else:
            out.append(_retext(t, re.sub(rf"^\s*(?:\S+\s+){{{n}}}", "", s)))
            n = 0
    return out, n


def _retext(word: Any, text: str) -> Any:
    """``text`` with the timing of ``word``."""
    if isinstance(word, TimedString):
        return TimedString(text, start_time=word.start_time, end_time=word.end_time)
    return text


def _shift(word: Any, offset: float) -> Any:
    if not isinstance(word, TimedString) or not isinstance(word.start_time, float | int):
        return word
    end = word.end_time if isinstance(word.end_time, float | int) else word.start_time
    return TimedString(
        str(word), start_time=word.start_time + offset, end_time=end + offset
    )


class Avatar(Protocol):
    async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None: ...


# Builds an avatar (or raises ProviderError); returning None means "no avatar". A factory may
# be a coroutine function: one that loads a model (the local face's portrait) off the loop.
AvatarFactory = Callable[[], Avatar | Awaitable[Avatar | None] | None]


def _describe(err: BaseException) -> str:
    """Our provider errors carry safe messages; anything else is cut short."""
    if isinstance(err, ProviderError | APIError):
        return str(err)
    if isinstance(err, TimeoutError):
        return "timed out waiting for the avatar to join"
    return f"{type(err).__name__}: {str(err)[:200]}"


def _audio_tail(agent_session: AgentSession) -> AudioOutput | None:
    cur = agent_session.output.audio
    while cur is not None and cur.next_in_chain is not None:
        cur = cur.next_in_chain
    return cur


def _restore_audio_tail(agent_session: AgentSession, tail: AudioOutput | None) -> None:
    """Undo a failed avatar's ``replace_audio_tail`` so the agent is not left talking to nobody."""
    if _audio_tail(agent_session) is tail:
        return
    if tail is None:
        agent_session.output.audio = None
    else:
        agent_session.output.replace_audio_tail(tail)


async def _close(avatar: Any) -> None:
    aclose = getattr(avatar, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.debug("closing a failed avatar raised", exc_info=True)


class ActiveAvatar(str):
    """The name of the avatar in use (a plain ``str`` to callers that only need that).

    ``avatar`` is the started avatar object (``None`` for "none"). ``watch`` is set when the
    avatar is a separate participant: it reports the avatar leaving mid-session and is closed
    with the agent session.
    """

    avatar: Any = None
    watch: AvatarWatch | None = None


async def start_avatar_with_fallback(
    chain: Sequence[tuple[str, AvatarFactory]],
    agent_session: AgentSession,
    room: rtc.Room,
    *,
    join_timeout: float | None = None,
    watch: bool = True,
    on_avatar_lost: LostCallback | None = None,
    fallback_on_loss: bool = False,
) -> ActiveAvatar:
    """Start the first avatar of ``chain`` that works; return its name (``"none"`` if none).

    Each factory builds its avatar (a ``ProviderError`` such as "Hedra ... discontinued" counts
    as a failure), then ``start`` runs once: hosted adapters never retry their paid POST, the
    next entry is the retry. With ``join_timeout`` an avatar must also publish its video in
    time. One error is logged naming what failed and what is used instead; the conversation
    itself never depends on an avatar.

    With ``watch`` (default), an avatar that is a separate participant is watched for the rest
    of the session (``result.watch``, see ``watch_avatar``); ``on_avatar_lost`` is then called
    if it leaves, and with ``fallback_on_loss`` the entries after it in ``chain`` are tried
    once the agent's own audio is back.
    """
    failures: list[str] = []
    active = NO_AVATAR
    started: Any = None
    rest: list[tuple[str, AvatarFactory]] = []  # what may replace the started avatar
    for index, (name, factory) in enumerate(chain):
        tail = _audio_tail(agent_session)
        avatar: Any = None
        try:
            built = factory()
            avatar = await built if inspect.isawaitable(built) else built
            if avatar is None:
                active = name
                break
            await avatar.start(agent_session, room=room)
            if join_timeout is not None and hasattr(avatar, "wait_for_join"):
                await avatar.wait_for_join(timeout=join_timeout)
        except Exception as err:
            failures.append(f"{name}: {_describe(err)}")
            if avatar is not None:
                await _close(avatar)
            _restore_audio_tail(agent_session, tail)
            continue
        active = name
        started = avatar
        rest = list(chain[index + 1 :]) if fallback_on_loss else []
        break
    if failures:
        logger.error(
            "avatar %s failed; using %s (%s)",
            chain[0][0],
            "no avatar" if active == NO_AVATAR else repr(active),
            "; ".join(failures),
            extra={
                "room": room.name,
                "avatar": active,
                "failed": [f.split(":")[0] for f in failures],
            },
        )
    result = ActiveAvatar(active)
    result.avatar = started
    identity = getattr(started, "avatar_identity", None)
    if watch and isinstance(identity, str) and identity:
        tail = _audio_tail(agent_session)
        if isinstance(tail, DataStreamAudioOutput):  # speech goes to the avatar participant
            result.watch = watch_avatar(
                agent_session,
                room,
                identity,
                name=active,
                on_lost=on_avatar_lost,
                fallback=rest,
                fallback_join_timeout=join_timeout,
            )
    return result


@dataclass(frozen=True)
class AvatarLost:
    """What happened when an avatar participant left mid-session."""

    avatar: str  # its name in the chain, e.g. "tavus"
    identity: str  # its participant identity
    reason: str  # LiveKit's DisconnectReason name, e.g. "CLIENT_INITIATED"
    audio_restored: bool  # the agent publishes its own audio track again
    interrupted_segments: int  # speech segments the avatar never reported as played


LostCallback = Callable[[AvatarLost], Awaitable[None] | None]


class AvatarWatch:
    """Watches one avatar participant for the rest of an agent session (see ``watch_avatar``)."""

    def __init__(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        identity: str | None,
        *,
        name: str,
        on_lost: LostCallback | None,
        fallback: Sequence[tuple[str, AvatarFactory]],
        fallback_join_timeout: float | None,
        audio_options: AudioOutputOptions,
    ) -> None:
        self._session = agent_session
        self._room = room
        self._identity = identity
        self._name = name
        self._on_lost = on_lost
        self._fallback = list(fallback)
        self._fallback_join_timeout = fallback_join_timeout
        self._audio_options = audio_options
        self._lost_fut: asyncio.Future[AvatarLost] = asyncio.get_running_loop().create_future()
        self._room_audio: RoomAudioOutput | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replacement: asyncio.Task[ActiveAvatar] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        room.on("participant_disconnected", self._on_participant_disconnected)
        agent_session.on("close", self._on_session_close)

    @property
    def identity(self) -> str | None:
        return self._identity

    @property
    def lost(self) -> AvatarLost | None:
        """``None`` while the avatar is present (or the watch was closed first)."""
        fut = self._lost_fut
        return fut.result() if fut.done() and not fut.cancelled() else None

    @property
    def room_audio(self) -> AudioOutput | None:
        """The agent's own audio output that took over, once the avatar was lost."""
        return self._room_audio

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_lost(self) -> AvatarLost:
        """Until the avatar leaves (``CancelledError`` if the watch is closed first)."""
        return await asyncio.shield(self._lost_fut)

    async def wait_replacement(self) -> ActiveAvatar:
        """After a loss with ``fallback`` entries: the avatar started instead (or "none")."""
        await self.wait_lost()
        if self._replacement is None:
            return ActiveAvatar(NO_AVATAR)
        return await asyncio.shield(self._replacement)

    async def aclose(self) -> None:
        """Stop watching and release the restored audio output (called on session close)."""
        self._detach()
        if self._closing is None:
            self._closing = asyncio.create_task(self._release())
        await asyncio.shield(self._closing)

    def _detach(self) -> None:
        """Stop reacting at once: a departure from here on is the session's own doing."""
        if self._closed:
            return
        self._closed = True
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        self._session.off("close", self._on_session_close)
        if not self._lost_fut.done():
            self._lost_fut.cancel()

    async def _release(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._room_audio is not None:
            await self._room_audio.aclose()
        replacement = self._replacement
        if replacement is not None and replacement.done() and not replacement.cancelled():
            # nobody else holds the avatar started in the lost one's place
            if replacement.exception() is None:
                started = replacement.result()
                if started.watch is not None:
                    await started.watch.aclose()
                if started.avatar is not None:
                    await _close(started.avatar)

    def _on_session_close(self, _ev: CloseEvent) -> None:
        self._detach()
        if self._closing is None:
            self._closing = asyncio.create_task(self._release())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _is_avatar(self, participant: rtc.RemoteParticipant) -> bool:
        if self._identity is not None:
            return participant.identity == self._identity
        agent = self._room.local_participant.identity
        return participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) == agent

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._closed or self._lost_fut.done() or not self._is_avatar(participant):
            return
        # synchronously, so a playback wait on the lost avatar ends in this same loop turn
        restored, interrupted = self._restore_room_audio(participant.identity)
        reason = rtc.DisconnectReason.Name(
            participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
        )
        lost = AvatarLost(
            avatar=self._name,
            identity=participant.identity,
            reason=reason,
            audio_restored=restored,
            interrupted_segments=interrupted,
        )
        logger.error(
            "avatar %s left the room mid-session (%s); %s",
            self._name,
            reason,
            "the agent speaks with its own audio track"
            if restored
            else "its audio output was no longer in use",
            extra={
                "room": self._room.name,
                "avatar": self._name,
                "identity": participant.identity,
                "interrupted_segments": interrupted,
            },
        )
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        if restored and self._fallback:
            self._replacement = self._spawn(self._start_fallback())
        self._lost_fut.set_result(lost)
        if self._on_lost is not None:
            try:
                maybe = self._on_lost(lost)
                if inspect.isawaitable(maybe):
                    self._spawn(maybe)
            except Exception:
                logger.exception("on_lost callback failed", extra={"room": self._room.name})

    def _restore_room_audio(self, identity: str) -> tuple[bool, int]:
        """Swap the data stream to ``identity`` for a published track of the agent's own."""
        old = _audio_tail(self._session)
        if not isinstance(old, DataStreamAudioOutput):
            return False, 0
        destination = datastream_destination(old)
        if destination is not None and destination != identity:
            return False, 0
        interrupted = pending_playback_count(old)
        # the avatar is gone: a clear-buffer RPC to it could only fail after its timeout
        silence_clear_buffer(old)
        opts = self._audio_options
        new = new_room_audio_output(
            self._room,
            opts,
            track_name=opts.track_name if isinstance(opts.track_name, str) else ROOM_AUDIO_TRACK,
        )
        self._room_audio = new
        # the swap finishes segments already handed to the avatar (interrupted) and moves a
        # segment still being captured onto the new output
        self._session.output.replace_audio_tail(new)
        # without wrappers the old output was the whole chain: end its waits directly
        for _ in range(pending_playback_count(old)):
            old.on_playback_finished(playback_position=0.0, interrupted=True)
        self._spawn(self._publish(new))
        return True, interrupted

    async def _publish(self, out: RoomAudioOutput) -> None:
        try:
            await out.start()  # publishes, then waits until someone subscribes
        except Exception:
            logger.exception("publishing the agent's audio failed", extra={"room": self._room.name})

    async def _start_fallback(self) -> ActiveAvatar:
        active = await start_avatar_with_fallback(
            self._fallback,
            self._session,
            self._room,
            join_timeout=self._fallback_join_timeout,
            on_avatar_lost=self._on_lost,
        )
        out = self._room_audio
        if out is not None and _audio_tail(self._session) is not out:
            # the new avatar speaks for the agent now: retire our track
            self._room_audio = None
            await out.aclose()
            await _unpublish(self._room, out)
        return active


ROOM_AUDIO_TRACK = "roomio_audio"  # the name RoomIO gives the agent's audio track


async def _unpublish(room: rtc.Room, out: RoomAudioOutput) -> None:
    pub = room_audio_publication(out)
    if pub is None or not room.isconnected():
        return
    with contextlib.suppress(Exception):
        await room.local_participant.unpublish_track(pub.sid)


def watch_avatar(
    agent_session: AgentSession,
    room: rtc.Room,
    avatar_identity: str | None,
    *,
    name: str = "avatar",
    on_lost: LostCallback | None = None,
    fallback: Sequence[tuple[str, AvatarFactory]] = (),
    fallback_join_timeout: float | None = None,
    audio_options: AudioOutputOptions | None = None,
) -> AvatarWatch:
    """Keep the session talking if the avatar participant ``avatar_identity`` leaves.

    ``None`` matches any participant publishing on behalf of the agent (attribute
    ``lk.publish_on_behalf``). On departure, if the session's audio still goes to that
    participant: the agent publishes its own audio track again (like RoomIO would, from
    ``audio_options``), playback waits on the avatar end as interrupted, one error is logged,
    ``on_lost`` is called, and the ``fallback`` avatars are tried in order. The watch closes
    itself when the session closes; call ``aclose`` before removing the avatar on purpose.
    """
    return AvatarWatch(
        agent_session,
        room,
        avatar_identity,
        name=name,
        on_lost=on_lost,
        fallback=fallback,
        fallback_join_timeout=fallback_join_timeout,
        audio_options=audio_options or AudioOutputOptions(),
    )
