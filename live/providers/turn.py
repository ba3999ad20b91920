"""Voice activity and end of turn, offline, chosen by measurement (``bench.turns``).

``LIMITS__TURN_DETECTOR`` picks one of five, each a LiveKit Agents turn detector (or LiveKit's
own VAD mode), so ``AgentSession`` runs the endpointing as it always does:

- ``vad``: the turn ends after ``ENDPOINTING_MIN_DELAY`` of silence. On the turn-taking
  corpus (12 voices that are not the agent's, 32 mid-sentence hesitations of 0.3-0.9 s) the
  audio models below cut more hesitations short than silence alone at every delay, because
  the robotic and data-driven voices confuse their prosody cues.
- ``transcript``: :class:`TranscriptTurnDetector` reads the transcript so far; one that trails
  off ("My phone number is ...", "I'd like to order") waits ``ENDPOINTING_MAX_DELAY``.
- ``lm`` (the default): the same, and SmolLM2 also holds words unlikely to end a turn ("Can
  you tell me") (:class:`live.providers.turn_lm.LanguageModelTurnDetector`), with the local
  STT; with a hosted STT it is ``transcript`` (no local model is loaded). Both text detectors
  also hold a turn while the local STT is still transcribing speech that followed.
- ``v1-mini``: LiveKit's local audio model (``livekit-local-inference``, offline).
- ``smart-turn``: pipecat's Smart Turn v3 (:class:`SmartTurnDetector`).

Results and the command that measures them: ``bench/results/turns-endpoint.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents.language import LanguageCode
from livekit.agents.llm import ChatContext
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.turn import TurnDetectionEvent

from config.settings import Settings
from live.providers.local.turn_models import get_vad, init_turn_detector
from live.providers.registry import ProviderContext
from live.providers.turn_text import (
    PendingSpeech,
    last_user_text,
    text_completeness,
    words_still_coming,
)

logger = logging.getLogger(__name__)

class TranscriptTurnDetector:
    """End of turn from the words: LiveKit's text turn-detector contract, with no model.

    ``AgentSession`` calls ``predict_end_of_turn`` with the conversation and the caller's
    transcript so far; below ``unlikely_threshold`` it waits the endpointing's max delay
    instead of its min delay. Works with any STT, local or hosted.
    """

    @property
    def model(self) -> str:
        return "transcript-rule"

    @property
    def provider(self) -> str:
        return "local"

    def __init__(self, stt: PendingSpeech | None = None) -> None:
        self._stt = stt

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return 0.5

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return language is None or str(language).lower().startswith("en")

    async def predict_end_of_turn(self, chat_ctx: ChatContext, *, timeout: float | None = None) -> float:
        if await words_still_coming(self._stt):
            return 0.0
        text = last_user_text(chat_ctx)
        return 0.0 if text is not None and text_completeness(text) == "incomplete" else 1.0


class _SmartTurnStream:
    """The caller's last 8 s at 16 kHz; a prediction runs on a thread when LiveKit asks."""

    def __init__(self, detector: SmartTurnDetector) -> None:
        from live.providers.smart_turn import SAMPLE_RATE, WINDOW_SECONDS

        self._detector = detector
        self._rate = SAMPLE_RATE
        self._keep = SAMPLE_RATE * WINDOW_SECONDS
        self._buf = np.zeros(0, dtype=np.float32)
        self._resampler: rtc.AudioResampler | None = None
        self._in_rate = 0
        self._fut: asyncio.Future[TurnDetectionEvent] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def model(self) -> str:
        return self._detector.model

    @property
    def provider(self) -> str:
        return self._detector.provider

    @property
    def is_fallback(self) -> bool:
        return False

    @property
    def prediction_timeout(self) -> float:
        return 1.0

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return self._detector.threshold

    async def backchannel_threshold(self, language: LanguageCode | None) -> float | None:
        return None

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return True

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        if self._closed:
            return
        frames = [frame]
        if frame.sample_rate != self._rate:
            if self._resampler is None or self._in_rate != frame.sample_rate:
                self._in_rate = frame.sample_rate
                self._resampler = rtc.AudioResampler(
                    frame.sample_rate, self._rate, num_channels=frame.num_channels,
                    quality=rtc.AudioResamplerQuality.QUICK,
                )
            frames = self._resampler.push(frame)
        for f in frames:
            pcm = np.frombuffer(f.data, dtype=np.int16)
            if f.num_channels > 1:
                pcm = pcm.reshape(-1, f.num_channels).mean(axis=1)
            self._buf = np.concatenate([self._buf, pcm.astype(np.float32) / 32768.0])[-self._keep :]

    def predict(self) -> asyncio.Future[TurnDetectionEvent]:
        self.cancel_inference()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TurnDetectionEvent] = loop.create_future()
        self._fut = fut
        snapshot = self._buf.copy()

        async def run() -> None:
            t0 = time.monotonic()
            try:
                p = await asyncio.to_thread(self._detector.model_instance.predict, snapshot)
            except Exception:
                logger.exception("smart turn prediction failed")
                p = 1.0  # commit on the min delay rather than stall the caller
            if not fut.done():
                fut.set_result(TurnDetectionEvent(
                    type="eot_prediction", end_of_turn_probability=p, last_speaking_time=time.time(),
                    inference_duration=time.monotonic() - t0,
                ))

        self._task = asyncio.create_task(run())
        return fut

    def cancel_inference(self, *, timed_out: bool = False) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(TurnDetectionEvent(
                type="eot_prediction", end_of_turn_probability=0.0, last_speaking_time=time.time(),
            ))
        self._fut = None

    def flush(self, reason: str | None = None) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self.cancel_inference()

    def end_input(self) -> None:
        self.flush()
        self._closed = True

    async def aclose(self) -> None:
        self.end_input()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class SmartTurnDetector:
    """pipecat's Smart Turn v3 as a LiveKit streaming turn detector (audio in, P(done) out)."""

    def __init__(self, model: Any, threshold: float = 0.5) -> None:
        self.model_instance = model
        self.threshold = threshold

    @property
    def model(self) -> str:
        return "smart-turn-v3.2"

    @property
    def provider(self) -> str:
        return "pipecat"

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> _SmartTurnStream:
        return _SmartTurnStream(self)


def get_smart_turn(ctx: ProviderContext) -> Any:
    from live.providers.smart_turn import SmartTurnModel

    return ctx.cached("local.eot.smart-turn", SmartTurnModel)


def get_turn_llama(ctx: ProviderContext) -> Any:
    """SmolLM2 on an engine of its own for end-of-turn scores, loaded once per process."""
    from config.catalog import LLM_MODELS
    from engines.llama import get_llama, turn_options

    return get_llama(ctx, LLM_MODELS[0], turn_options(ctx.settings.llm.weights))


def turn_detector(settings: Settings, ctx: ProviderContext, stt: Any = None) -> Any:
    """The configured detector, or ``"vad"`` (LiveKit's silence rule). ``stt``: the session's;
    a local one tells the text detectors when speech is still being transcribed."""
    kind = settings.limits.turn_detector
    pending: PendingSpeech | None = stt if hasattr(stt, "final_of_pending") else None
    if kind == "transcript" or (kind == "lm" and pending is None):
        # with a hosted STT, "lm" reads the words by the rule alone: no local model is loaded
        return TranscriptTurnDetector(pending)
    if kind == "lm":
        from live.providers.turn_lm import LanguageModelTurnDetector

        limits = settings.limits
        return LanguageModelTurnDetector(
            get_turn_llama(ctx), limits.turn_lm_threshold, stt=pending,
            unsure_confidence=limits.turn_unsure_confidence,
            unsure_delay=min(max(limits.endpointing_unsure_delay, limits.endpointing_min_delay),
                             limits.endpointing_max_delay),
            sure_threshold=limits.turn_sure_threshold,
            sure_delay=limits.endpointing_sure_delay,
            complete_delay=limits.endpointing_min_delay,
        )
    if kind == "smart-turn":
        return SmartTurnDetector(get_smart_turn(ctx))
    if kind == "v1-mini":
        if not init_turn_detector(ctx):
            return "vad"
        from livekit.agents.inference.eot import TurnDetector

        return TurnDetector(version="v1-mini")
    return "vad"


def turn_handling(
    settings: Settings, ctx: ProviderContext, *, can_pause: bool = False, stt: Any = None
) -> dict[str, Any]:
    """``AgentSession`` keyword arguments for VAD, end of turn, preemption and interruptions.

    Use as ``AgentSession(stt=..., llm=..., tts=..., **turn_handling(settings, ctx))``.
    ``can_pause``: the agent's audio output can pause (the room's own, the in-process local
    avatar). Then caller sound over the agent pauses it at once, without waiting for words,
    and the agent resumes when no words follow (LiveKit's false-interruption resume; the
    local STT passes no backchannel on while the agent speaks). Otherwise the agent stops
    only once the caller's words are heard (``interruption_min_words``).
    """
    limits = settings.limits
    pause = can_pause and limits.interruption_pause
    detector = turn_detector(settings, ctx, stt)
    # a detector that waits its longer waits itself gives LiveKit its shortest one
    shortest = getattr(detector, "shortest_delay", None)
    return {
        "vad": get_vad(ctx, limits.vad_min_silence),
        "aec_warmup_duration": limits.echo_guard_seconds or None,
        "turn_handling": {
            "turn_detection": detector,
            "endpointing": {
                "min_delay": limits.endpointing_min_delay if shortest is None else shortest,
                "max_delay": limits.endpointing_max_delay,
            },
            "preemptive_generation": {
                "enabled": True,
                "preemptive_tts": limits.preemptive_tts,
            },
            "interruption": {
                "resume_false_interruption": pause,
                "min_duration": limits.interruption_min_speech,
                "min_words": 0 if pause else limits.interruption_min_words,
                **({"false_interruption_timeout": limits.false_interruption_timeout}
                   if pause else {}),
            },
        },
    }
