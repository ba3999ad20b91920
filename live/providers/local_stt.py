"""Local speech to text: faster-whisper as a LiveKit ``stt.STT`` (no key, no network).

Whisper is not a streaming model. Given a VAD, :class:`LocalSTT` streams anyway, the way
``stt.StreamAdapter`` does (the VAD cuts the caller's speech into utterances, one final
transcript each), plus two things the adapter cannot do:

- **speculative finals**: when the caller has been quiet for ``speculate_after`` seconds the
  utterance so far is transcribed at once, while the VAD is still waiting out its silence
  rule; if the caller stays quiet, that transcript is the final one, so Whisper's time is
  mostly hidden in the silence the VAD needed anyway. If the caller speaks again, it is
  dropped and the utterance goes on.
- **interim transcripts** every ``interim_seconds`` of speech (0: none), when the model is
  idle, so captions follow the caller.

Without a VAD it says ``streaming=False`` and AgentSession wraps it in ``stt.StreamAdapter``.
The model is loaded once per process (``ctx.cached``) and shared by every session through its
own worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents import vad as lk_vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from config.catalog import DEFAULT_WHISPER
from config.settings import STTSettings
from engines.whisper import (
    DEFAULT_WINDOW_SECONDS,
    FULL_WINDOW_SECONDS,
    RETRIED_DOUBTS,
    WHISPER_SAMPLE_RATE,
    WINDOW_MARGIN_SECONDS,
    Transcript,
    WhisperEngine,
    get_whisper,
)
from live.providers.local.turn_models import VAD_ACTIVATION, VAD_DEACTIVATION, get_vad
from live.providers.registry import ProviderContext, register
from live.providers.turn_text import HeardFinal

logger = logging.getLogger(__name__)

# Quiet long enough to guess the caller is done: transcribe now, confirm at the VAD's end of
# speech (0.55 s of silence by default), so Whisper's time overlaps the wait. Through the room,
# 0.05 s against 0.1 s, two pairs of runs: begun 0.06 s sooner with one more decode a run, the
# same turn heard 0.023 s sooner at the median in both pairs (turns-call-spec005-*.md against
# -spec010-*.md); 0.1 s against 0.2 s before that: heard p50 1.20 against 1.28 s
# (turns-call-spec010.md, -spec020.md). ``STT__SPECULATE_AFTER`` sets it.
SPECULATE_AFTER_SECONDS = 0.05
# While the agent speaks, the caller's first words are transcribed this far into their speech
# (and again at the later marks while nothing decisive was heard), so the session can tell
# "stop" (interrupts) from "mm-hm" (does not) within about half a second.
EARLY_INTERIM_MARKS = (0.3, 0.5, 0.75)
# Whisper guesses words in a hum ("And then we'll..." for a robotic "mm-hm"), with low
# confidence: an early interim below this is not taken as the caller's words.
EARLY_MIN_CONFIDENCE = 0.35
# What a listener says to show they follow, not to take the turn.
BACKCHANNELS = frozenset(
    """mm mmm mhm mmhm mmhmm hm hmm uh-huh uhhuh uh huh yeah yep yup yes ok okay right alright
    aha ah oh sure exactly great nice cool wow true indeed gotcha""".split()
)
_BACKCHANNEL_PHRASES = frozenset({"i see", "got it", "uh huh", "mm hm", "mm hmm", "all right"})


def _hum(word: str) -> bool:
    """'mmmm', 'hmm', 'mhm', 'mmhmm': however Whisper spells a hum."""
    return bool(word) and set(word) <= {"m", "h"} and "m" in word


def is_backchannel(text: str) -> bool:
    """'Mm-hm.', 'Yeah, okay.', 'I see.': feedback a caller gives while the agent speaks."""
    words = "".join(c if c.isalpha() or c in " '-" else " " for c in text.lower()).split()
    words = [p for w in words for p in w.split("-") if p]
    if not words:
        return False
    joined = " ".join(words)
    if _hum(joined.replace(" ", "")):  # "M M H.", "M-M-H-M."
        return True
    if len(words) > 3:
        return False
    return joined in _BACKCHANNEL_PHRASES or all(w in BACKCHANNELS or _hum(w) for w in words)


# Words callers say to stop the agent: Whisper is often unsure of them in a robotic voice
# ("Stop" at 0.38, "Sorry" at 0.31), so with one of them a lower confidence still counts.
STOP_WORDS = frozenset("stop wait no nope hold hang sorry excuse pardon what why don't not".split())
STOP_WORD_MIN_CONFIDENCE = 0.2


def spoken_words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped ("Hold on, stop." -> hold, on, stop)."""
    return "".join(c if c.isalpha() or c in " '" else " " for c in text.lower()).split()


def over_agent_words(text: str, confidence: float, voiced_seconds: float = float("inf")) -> bool:
    """Whether speech over the agent had words that should stop it: not a backchannel, nor a
    hum Whisper guessed words in (too many for the time, or unsure); a stop word counts at a
    lower confidence. Measured on voices the project did not make by
    ``bench.turns.backchannel``."""
    if not text or is_backchannel(text) or hum_guess(text, voiced_seconds):
        return False
    words = spoken_words(text)
    if confidence >= STOP_WORD_MIN_CONFIDENCE and any(w in STOP_WORDS for w in words):
        return True
    return confidence >= EARLY_MIN_CONFIDENCE


def hum_guess(text: str, voiced_seconds: float) -> bool:
    """Words Whisper guessed in a hum: "and then make sure" in a half-second "mm-hm" is
    faster than anyone speaks (fast speech is about 4 words a second)."""
    words = len(text.split())
    return words >= 3 and words > HUM_WORDS_PER_SECOND * max(voiced_seconds, 0.1)


# Over the agent, more words a second of voice than this is Whisper guessing in a hum.
HUM_WORDS_PER_SECOND = 5.5
# A pause's verdict also covers speech that began this long before it (the session pauses
# the agent LIMITS__INTERRUPTION_MIN_SPEECH into the caller's speech, plus the VAD's lag).
VERDICT_LOOKBACK_S = 1.5
MIN_AUDIO_SAMPLES = WHISPER_SAMPLE_RATE // 10  # under 100 ms: nothing to say


def _float_mono(frames: Iterable[rtc.AudioFrame]) -> np.ndarray:
    """int16 frames (any channel count) -> mono float32 in [-1, 1]."""
    parts = []
    for f in frames:
        pcm = np.frombuffer(f.data, dtype=np.int16)
        if f.num_channels != 1:
            pcm = pcm.reshape(-1, f.num_channels).mean(axis=1)
        parts.append(pcm.astype(np.float32) / 32768.0)
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _resampler(frame: rtc.AudioFrame) -> rtc.AudioResampler:
    return rtc.AudioResampler(
        frame.sample_rate,
        WHISPER_SAMPLE_RATE,
        num_channels=frame.num_channels,
        quality=rtc.AudioResamplerQuality.HIGH,
    )


def to_whisper_audio(buffer: utils.AudioBuffer) -> np.ndarray:
    """Any LiveKit audio (rate, channels, list of frames) -> 16 kHz mono float32 in [-1, 1]."""
    frame = utils.merge_frames(buffer) if isinstance(buffer, list) else buffer
    if frame.samples_per_channel == 0:
        return np.zeros(0, dtype=np.float32)
    if frame.sample_rate == WHISPER_SAMPLE_RATE:
        return _float_mono([frame])
    resampler = _resampler(frame)
    return _float_mono([*resampler.push(frame), *resampler.flush()])


def quiet_after(ev: lk_vad.VADEvent) -> float:
    """Seconds of quiet up to the end of this VAD window, this window included.

    LiveKit's Silero stream sends a window's event before it counts that window, so its
    ``raw_accumulated_silence`` is one window (32 ms) behind: the speculative transcript
    would start that much later (bench/results/turns-vad-lag.md). The rule is the stream's own.
    """
    voiced = ev.probability >= VAD_ACTIVATION or (
        ev.speaking and ev.probability > VAD_DEACTIVATION)
    return 0.0 if voiced else ev.raw_accumulated_silence + sum(f.duration for f in ev.frames)


class LocalSTT(stt.STT):
    """Whisper (tiny.en or base) through faster-whisper, int8, on the process's model thread."""

    def __init__(
        self,
        *,
        engine: WhisperEngine,
        language: str = "en",
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        vad: lk_vad.VAD | None = None,
        interim_seconds: float = 0.0,
        speculate_after: float = SPECULATE_AFTER_SECONDS,
        retry_unlikely: bool = False,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=vad is not None,
                interim_results=vad is not None,
                aligned_transcript=False,
                offline_recognize=True,
            )
        )
        self._engine = engine
        self._language = language
        self._window_seconds = window_seconds
        self._vad = vad
        self._interim_seconds = interim_seconds
        self._speculate_after = speculate_after
        self._retried = RETRIED_DOUBTS | ({"unlikely"} if retry_unlikely else set())
        self.speculation_hits = 0  # finals that came from a speculative transcript
        self.speculation_misses = 0  # speculative transcripts dropped: the caller went on
        # Set by the session's owner while the agent's voice plays: then the caller's first
        # words are transcribed early and a backchannel alone is not passed on as input.
        # Judged when an utterance starts: the session pauses the agent moments later (the
        # agent is then "listening"), and the utterance is still one spoken over it.
        self._agent_speaking = False
        self._agent_quiet_since = 0.0  # monotonic time the agent last stopped speaking
        # Set by the session's owner: is a reply paused for the caller right now? Then speech
        # that starts is still speech over the agent, however late this VAD reports it.
        self.agent_held: Callable[[], bool] | None = None
        self.backchannels_ignored = 0
        # recent utterances: [began (monotonic), words heard? (None: not transcribed yet),
        # words heard early (a hint: the final decides)]
        self._heard: deque[list[Any]] = deque(maxlen=16)
        self._decided = asyncio.Event()
        self._decided.set()
        # finals the streams sent, and finals the session said it received (the session's
        # owner calls final_received on its "user_input_transcribed" events)
        self._finals_sent = 0
        self._finals_received = 0
        self._received = asyncio.Event()
        # the last final sent: the turn detector weighs its words by the confidence in them
        self.last_final: HeardFinal | None = None
        # told each speculative transcript sent as LiveKit's preflight: the turn detector
        # scores its words while the silence rule still runs (``turn_lm``)
        self.preflight_listeners: list[Callable[[str], None]] = []

    def preflight_sent(self, text: str) -> None:
        """A speculative transcript went out as the preflight: tell the listeners."""
        for listener in self.preflight_listeners:
            try:
                listener(text)
            except Exception:  # a listener's bug must not stop the caller's transcripts
                logger.exception("preflight listener failed")

    @property
    def agent_speaking(self) -> bool:
        return self._agent_speaking

    @agent_speaking.setter
    def agent_speaking(self, speaking: bool) -> None:
        if self._agent_speaking and not speaking:
            self._agent_quiet_since = time.monotonic()
        self._agent_speaking = speaking

    def spoken_over(self, started_at: float) -> bool:
        """Did speech that began at ``started_at`` (monotonic) begin over the agent? The
        session pauses the agent a moment into the caller's speech, which may be before
        this VAD reports the start: the agent going quiet after it began still counts."""
        held = self.agent_held is not None and self.agent_held()
        return self._agent_speaking or held or self._agent_quiet_since > started_at

    async def words_since(self, since: float, timeout: float) -> bool | None:
        """Did the caller say words in speech that began after ``since`` (monotonic; less
        ``VERDICT_LOOKBACK_S``: the speech that made the session pause the agent began a
        moment before it)? True: an interruption is coming. False: only a backchannel, a hum,
        nothing. None: still being transcribed after ``timeout`` s. A paused reply resumes
        only on False."""

        def relevant() -> list[list[Any]]:
            return self._heard_since(since)

        deadline = time.monotonic() + timeout
        while True:
            self._decided.clear()
            if not any(u[1] is None for u in relevant()):
                break
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(self._decided.wait(), max(left, 0.0))
            except TimeoutError:
                # the final is late (a busy Whisper): words heard early are the best guess
                return True if any(u[2] for u in relevant()) else None
        return any(u[1] for u in relevant())

    def heard_no_words(self, since: float) -> bool:
        """:meth:`no_words_since`'s answer if it is known now: speech since ``since`` was
        heard and had no words, and none began since that is not decided yet."""
        relevant = self._heard_since(since)
        return bool(relevant) and all(u[1] is False for u in relevant)

    async def no_words_since(self, since: float) -> bool:
        """Once speech that began after ``since`` (as in :meth:`words_since`) has been heard
        and transcribed, or judged from its speculative transcript when the caller went quiet:
        True when none of it had words, False when some had. Waits until then; a paused reply
        goes on at True without waiting for the session's timer."""
        while True:
            self._decided.clear()
            relevant = self._heard_since(since)
            if relevant and all(u[1] is not None for u in relevant):
                return not any(u[1] for u in relevant)
            await self._decided.wait()

    def _heard_since(self, since: float) -> list[list[Any]]:
        """The utterances that began after ``since``, less ``VERDICT_LOOKBACK_S``."""
        return [u for u in self._heard if u[0] >= since - VERDICT_LOOKBACK_S]

    def final_received(self) -> None:
        """The session received a final transcript (its ``user_input_transcribed`` event)."""
        self._finals_received += 1
        self._received.set()

    async def finals_delivered(self, timeout: float) -> bool:
        """Wait until the session has received every final sent so far (False on timeout).
        The session receives a final before it asks the turn detector again."""
        sent = self._finals_sent
        deadline = time.monotonic() + timeout
        while self._finals_received < sent:
            self._received.clear()
            try:
                await asyncio.wait_for(self._received.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return False
        return True

    async def final_of_pending(self, timeout: float) -> bool | None:
        """If speech is still being transcribed, wait for it: True when it had words (its
        final transcript is then on its way to the session), False when nothing was pending
        or it had none, None after ``timeout`` s. The session ends a turn on the transcript
        it has; a pause inside a sentence splits it in two utterances, and the second's
        final can come after the session's delay ran out (Whisper retrying a short window)."""
        pending = [u[0] for u in self._heard if u[1] is None]
        if not pending:
            return False
        return await self.words_since(min(pending) + VERDICT_LOOKBACK_S, timeout)

    def _utterance_began(self, began: float) -> list[Any]:
        record: list[Any] = [began, None, False]
        self._heard.append(record)
        return record

    @staticmethod
    def _utterance_hinted(record: list[Any] | None) -> None:
        """Words heard early, on part of the utterance: Whisper guesses words in a hum ("I'll
        see" for "I see"), so only the final, on all of it, says whether words were said."""
        if record is not None:
            record[2] = True

    def _utterance_heard(self, record: list[Any] | None, words: bool) -> None:
        if record is not None and record[1] is None:
            record[1] = words
        self._decided.set()

    @property
    def model(self) -> str:
        return f"whisper-{self._engine.model_name}"

    @property
    def provider(self) -> str:
        return "local"

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        if self._vad is None:
            return super().stream(language=language, conn_options=conn_options)
        return _LocalSpeechStream(
            stt=self,
            vad=self._vad,
            language=self._language_code(language),
            conn_options=conn_options,
        )

    def _language_code(self, language: NotGivenOr[str]) -> str:
        return language if isinstance(language, str) and language else self._language

    async def transcribe(self, audio: np.ndarray, language: str, *, full_retry: bool = True,
                         window_seconds: float | None = None) -> Transcript | None:
        """16 kHz float audio -> transcript (None for under 100 ms of audio)."""
        if audio.size < MIN_AUDIO_SAMPLES:
            return None
        return await self._engine.transcribe(
            audio, language[:2] if language else None,
            self._window_seconds if window_seconds is None else window_seconds, full_retry,
            self._retried,
        )

    def speech_data(self, result: Transcript | None, language: str) -> stt.SpeechData:
        if result is None:
            return stt.SpeechData(language=LanguageCode(language), text="")
        return stt.SpeechData(
            language=LanguageCode(result.language),
            text=result.text,
            start_time=result.start,
            end_time=result.end,
            confidence=result.confidence,
        )

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        audio = to_whisper_audio(buffer)
        lang = self._language_code(language)
        request_id = utils.shortuuid()
        result = await self.transcribe(audio, lang)
        data = self.speech_data(result, lang)
        logger.debug(
            "local transcript",
            extra={
                "request_id": request_id,
                "audio_seconds": round(audio.size / WHISPER_SAMPLE_RATE, 3),
                "lk.pii.text": data.text,
            },
        )
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT, request_id=request_id, alternatives=[data]
        )


def _consume(task: asyncio.Task[Any]) -> None:
    """Done callback for a dropped transcription: retrieve its error so none goes unseen."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("dropped local transcription failed", exc_info=task.exception())


class _Utterance:
    """The caller's speech so far at 16 kHz, resampled once as frames arrive.

    Interims and speculative finals take snapshots of a growing utterance; resampling it all
    again for each (tens of ms for 9 s, on the event loop) would grow with its length.
    """

    def __init__(self) -> None:
        self._resampler: rtc.AudioResampler | None = None
        self._rate = 0
        self._chunks: list[np.ndarray] = []
        self.seconds = 0.0

    def push(self, frames: list[rtc.AudioFrame]) -> None:
        for frame in frames:
            self.seconds += frame.duration
            if frame.sample_rate == WHISPER_SAMPLE_RATE:
                self._chunks.append(_float_mono([frame]))
                continue
            if self._resampler is None or self._rate != frame.sample_rate:
                self._rate, self._resampler = frame.sample_rate, _resampler(frame)
            self._chunks.append(_float_mono(self._resampler.push(frame)))

    def audio(self) -> np.ndarray:
        """Everything so far (the resampler holds back a few ms: the tail is quiet anyway)."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, dtype=np.float32)


class _LocalSpeechStream(stt.RecognizeStream):
    """VAD-cut utterances -> Whisper, with speculative finals and optional interims."""

    def __init__(
        self,
        *,
        stt: LocalSTT,
        vad: lk_vad.VAD,
        language: str,
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._local = stt
        self._vad = vad
        self._language = language

    async def _run(self) -> None:
        vad_stream = self._vad.stream()
        pending: set[asyncio.Task[Any]] = set()
        local, send = self._local, self._event_ch.send_nowait
        # interims only while the utterance fits the short window: past it, each one would
        # pay for Whisper's full 30 s window (and with the window at 30 s, never)
        interim_limit = (
            local._window_seconds - WINDOW_MARGIN_SECONDS
            if local._window_seconds < FULL_WINDOW_SECONDS
            else 0.0
        )

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    vad_stream.flush()
                else:
                    vad_stream.push_frame(data)
            vad_stream.end_input()

        def start(audio: np.ndarray, kind: str, *, full_retry: bool = True,
                  window_seconds: float | None = None) -> asyncio.Task[Transcript | None]:
            """A decode on the serial Whisper; ``kind`` names its task (``stt-early``...)."""
            task = asyncio.create_task(local.transcribe(
                audio, self._language, full_retry=full_retry, window_seconds=window_seconds),
                name=f"stt-{kind}")
            pending.add(task)
            task.add_done_callback(pending.discard)
            return task

        def drop(task: asyncio.Task[Transcript | None] | None) -> None:
            """Not needed any more: cancel it (a queued one never runs), keep its errors seen."""
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                task.add_done_callback(_consume)

        async def recognize() -> None:
            speech = _Utterance()
            speaking = False
            utterance = 0
            speculation: asyncio.Task[Transcript | None] | None = None
            interim: asyncio.Task[Transcript | None] | None = None
            last_silence = 0.0
            since_interim = 0.0
            early: asyncio.Task[Transcript | None] | None = None
            early_marks: list[float] = []
            early_decided = False  # the caller's words are out (or speech ended)
            over_agent = False  # this utterance began while the agent was speaking
            heard: list[Any] | None = None  # its record for words_since
            early_verdict = False  # "no words" told from the speculative transcript
            words_shown = False  # an interim with words went out for this utterance

            def send_early(task: asyncio.Task[Transcript | None], number: int) -> None:
                """Words over the agent: pass them on at once, unless only a backchannel or a
                low-confidence guess was heard; then a later mark tries again."""
                nonlocal early_decided, words_shown
                if task.cancelled() or task.exception() is not None:
                    _consume(task)
                    return
                result = task.result()
                if number != utterance or not speaking or result is None or not result.text:
                    return
                if not result.trusted or not over_agent_words(result.text, result.confidence):
                    return
                early_decided = words_shown = True
                local._utterance_hinted(heard)
                send(
                    stt.SpeechEvent(
                        type=stt.SpeechEventType.INTERIM_TRANSCRIPT,
                        alternatives=[local.speech_data(result, self._language)],
                    )
                )

            def send_interim(task: asyncio.Task[Transcript | None], number: int) -> None:
                nonlocal words_shown
                if task.cancelled() or task.exception() is not None:
                    _consume(task)
                    return
                result = task.result()
                if number == utterance and speaking and result is not None and result.text:
                    if over_agent and is_backchannel(result.text):
                        return
                    words_shown = True
                    send(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.INTERIM_TRANSCRIPT,
                            alternatives=[local.speech_data(result, self._language)],
                        )
                    )

            def send_preflight(task: asyncio.Task[Transcript | None], number: int,
                               started: float) -> None:
                """The speculative transcript, as LiveKit's preflight: the session starts the
                reply (LLM, first TTS sentence) now and keeps it if the final says the same."""
                nonlocal early_verdict
                if task.cancelled() or task.exception() is not None:
                    return  # drop() retrieves the error
                result = task.result()
                logger.debug("speculative transcript ready", extra={
                    "took_s": round(time.monotonic() - started, 3),
                    # False: the VAD's end of speech came first, this is the final already
                    "before_end_of_speech": number == utterance and task is speculation})
                if number == utterance and task is speculation and over_agent and (
                    result is None or not result.trusted
                    or not over_agent_words(result.text, result.confidence)
                ):
                    # no reply is started for a backchannel over the agent, and a paused
                    # reply need not wait for the final to go on (undone if the caller
                    # goes on speaking)
                    early_verdict = True
                    local._utterance_heard(heard, words=False)
                    return
                if number == utterance and task is speculation and result is not None and result.text:
                    send(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
                            alternatives=[local.speech_data(result, self._language)],
                        )
                    )
                    local.preflight_sent(result.text)

            def retract() -> None:
                """The final found no turn in what an interim showed as words (Whisper's early
                guess in a hum): an empty interim takes them back, or the session would keep
                them and commit them as the caller's turn when the call ends."""
                logger.debug("interim words taken back: the final heard no turn")
                send(
                    stt.SpeechEvent(
                        type=stt.SpeechEventType.INTERIM_TRANSCRIPT,
                        alternatives=[local.speech_data(None, self._language)],
                    )
                )

            async for ev in vad_stream:
                if ev.type == lk_vad.VADEventType.START_OF_SPEECH:
                    speaking, utterance = True, utterance + 1
                    began = time.monotonic() - ev.speech_duration
                    over_agent = local.spoken_over(began)
                    logger.debug("caller speech began", extra={
                        "over_agent": over_agent, "agent_speaking": local.agent_speaking,
                        "began_s_ago": round(time.monotonic() - began, 3)})
                    heard = local._utterance_began(began)
                    early_verdict = False
                    early_marks = list(EARLY_INTERIM_MARKS)
                    early_decided = words_shown = False
                    speech = _Utterance()
                    speech.push(ev.frames)
                    last_silence = since_interim = 0.0
                    send(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
                elif ev.type == lk_vad.VADEventType.INFERENCE_DONE:
                    if not speaking:
                        continue
                    speech.push(ev.frames)
                    since_interim += sum(f.duration for f in ev.frames)
                    silence = quiet_after(ev)
                    if silence < last_silence and speculation is not None:
                        # the VAD's silence count restarted: the caller goes on
                        local.speculation_misses += 1
                        drop(speculation)
                        speculation = None
                        if early_verdict and heard is not None:
                            early_verdict, heard[1] = False, None  # not decided after all
                    last_silence = silence
                    if speculation is None and silence >= local._speculate_after:
                        drop(interim)  # the final matters more than a caption
                        interim = None
                        # over the agent, the speculation decides whether a paused reply
                        # goes on: a short-window result that looks wrong (a hum) says "no
                        # words" at once; the final decodes it again on the full window
                        speculation = start(speech.audio(), "speculative", full_retry=not over_agent)
                        logger.debug("speculative transcription started", extra={
                            "silence_s": round(silence, 3), "speech_s": round(speech.seconds, 3)})
                        speculation.add_done_callback(
                            lambda t, n=utterance, s0=time.monotonic(): send_preflight(  # type: ignore[misc]
                                t, n, s0)
                        )
                    elif (
                        over_agent
                        and speculation is None  # begun: it hears as much, and decides first
                        and not early_decided
                        and early_marks
                        and ev.speech_duration >= early_marks[0]
                        and (early is None or early.done())
                    ):
                        # "stop" or "mm-hm"? (not dropped by the speculation: it decides sooner)
                        while early_marks and ev.speech_duration >= early_marks[0]:
                            early_marks.pop(0)
                        # only words the short window is sure of go on early: one that
                        # looks wrong is not decoded again on the full window (seconds on a
                        # busy machine, ahead of the transcript that lets the reply go on)
                        early = start(speech.audio(), "early", full_retry=False)
                        early.add_done_callback(
                            lambda t, n=utterance: send_early(t, n)  # type: ignore[misc]
                        )
                    elif (
                        local._interim_seconds > 0
                        and silence == 0.0
                        and since_interim >= local._interim_seconds
                        and speech.seconds <= interim_limit
                        and local._engine.busy == 0  # no other session's turn waits on it
                    ):
                        since_interim = 0.0
                        interim = start(speech.audio(), "interim")
                        interim.add_done_callback(
                            lambda t, n=utterance: send_interim(t, n)  # type: ignore[misc]
                        )
                elif ev.type == lk_vad.VADEventType.END_OF_SPEECH:
                    speaking = False
                    voiced = ev.speech_duration  # the VAD's speech, without padding or silence
                    speech_end_time = time.time() - ev.silence_duration - ev.inference_duration
                    logger.debug("caller speech ended (VAD)", extra={
                        "silence_s": round(ev.silence_duration, 3),
                        "speculation": "none" if speculation is None else (
                            "done" if speculation.done() else "running")})
                    send(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.END_OF_SPEECH,
                            speech_end_time=speech_end_time,
                        )
                    )
                    drop(interim)
                    interim = None
                    # the END frames are the ones already pushed: the utterance is complete
                    final, speculation = speculation, None
                    speculative = final is not None
                    if final is not None:
                        local.speculation_hits += 1
                    else:
                        final = start(speech.audio(), "final", full_retry=not over_agent)
                    result = await final
                    if result is not None and not result.trusted:
                        if over_agent:
                            # as when the speculation decides before the end of speech: a
                            # short-window guess that looks wrong lets a paused reply go on
                            # now, not after the full-window decode (a second or two on a
                            # busy machine); that decode can still find words, whose final
                            # interrupts
                            local._utterance_heard(heard, words=False)
                        # the short-window guess: the final is Whisper's best
                        result = await start(speech.audio(), "final-full", window_seconds=FULL_WINDOW_SECONDS)
                    request_id = utils.shortuuid()
                    send(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.RECOGNITION_USAGE,
                            request_id=request_id,
                            recognition_usage=stt.RecognitionUsage(audio_duration=speech.seconds),
                        )
                    )
                    if result is None or not result.text:
                        local._utterance_heard(heard, words=False)
                        if words_shown:
                            retract()
                        continue
                    if over_agent and not over_agent_words(result.text, result.confidence, voiced):
                        # feedback while the agent talks (or a hum Whisper guessed words in):
                        # not a turn, not an interruption; a paused agent resumes
                        local.backchannels_ignored += 1
                        logger.debug("not a turn: said over the agent", extra={
                            "lk.pii.text": result.text, "confidence": round(result.confidence, 2),
                            "voiced_s": round(voiced, 3)})
                        local._utterance_heard(heard, words=False)
                        if words_shown:
                            retract()
                        continue
                    logger.debug(
                        "local transcript",
                        extra={
                            "request_id": request_id,
                            "audio_seconds": round(speech.seconds, 3),
                            "speculative": speculative,
                            "lk.pii.text": result.text,
                        },
                    )
                    local._finals_sent += 1
                    local.last_final = HeardFinal(result.text, result.confidence, speech_end_time)
                    local._utterance_heard(heard, words=True)
                    send(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                            request_id=request_id,
                            alternatives=[local.speech_data(result, self._language)],
                            speech_end_time=speech_end_time,
                        )
                    )

        tasks = [
            asyncio.create_task(forward_input(), name="LocalSTT.forward_input"),
            asyncio.create_task(recognize(), name="LocalSTT.recognize"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for record in local._heard:  # nothing more will be heard: none need wait
                local._utterance_heard(record, words=False)
            await utils.aio.cancel_and_wait(*tasks, *pending)
            await vad_stream.aclose()


@register("stt", "local", extra="local")
def create_local_stt(options: STTSettings, ctx: ProviderContext) -> Any:
    """Whisper ``tiny.en`` by default, ``base`` for better accuracy (about 2x slower)."""
    # as another provider's fallback the options name that provider's model: use the default
    model = options.model if options.provider == "local" else DEFAULT_WHISPER
    engine = get_whisper(ctx, model)
    return LocalSTT(
        engine=engine,
        language=options.language,
        window_seconds=options.window_seconds,
        vad=get_vad(ctx),
        interim_seconds=options.interim_seconds,
        speculate_after=options.speculate_after,
        retry_unlikely=options.retry_unlikely,
    )
