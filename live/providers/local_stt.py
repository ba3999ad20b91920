"""Local speech to text: faster-whisper as a LiveKit ``stt.STT`` (no key, no network).

Whisper is not a streaming model, so the STT says ``streaming=False``: AgentSession wraps it
in ``stt.StreamAdapter`` with the session's VAD, which cuts the caller's speech into
utterances and calls :meth:`LocalSTT.recognize` once per utterance. The model is loaded once
per process (``ctx.cached``) and shared by every session through its own worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import NOT_GIVEN, APIConnectOptions, NotGivenOr

from config.settings import STTSettings
from live.providers.local_models import (
    DEFAULT_WHISPER,
    DEFAULT_WINDOW_SECONDS,
    WHISPER_SAMPLE_RATE,
    WhisperEngine,
    get_whisper,
)
from live.providers.registry import ProviderContext, register

logger = logging.getLogger(__name__)


def to_whisper_audio(buffer: utils.AudioBuffer) -> np.ndarray:
    """Any LiveKit audio (rate, channels, list of frames) -> 16 kHz mono float32 in [-1, 1]."""
    frame = utils.merge_frames(buffer) if isinstance(buffer, list) else buffer
    if frame.samples_per_channel == 0:
        return np.zeros(0, dtype=np.float32)
    if frame.num_channels != 1 or frame.sample_rate != WHISPER_SAMPLE_RATE:
        resampler = rtc.AudioResampler(
            frame.sample_rate,
            WHISPER_SAMPLE_RATE,
            num_channels=frame.num_channels,
            quality=rtc.AudioResamplerQuality.HIGH,
        )
        frames = [*resampler.push(frame), *resampler.flush()]
        pcm = (
            np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
            if frames
            else np.zeros(0, dtype=np.int16)
        )
        if frame.num_channels != 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1)
    else:
        pcm = np.frombuffer(frame.data, dtype=np.int16)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


class LocalSTT(stt.STT):
    """Whisper (tiny.en or base) through faster-whisper, int8 on 2 CPU threads."""

    def __init__(
        self,
        *,
        engine: WhisperEngine,
        language: str = "en",
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=False,
                interim_results=False,
                aligned_transcript=False,
                offline_recognize=True,
            )
        )
        self._engine = engine
        self._language = language
        self._window_seconds = window_seconds

    @property
    def model(self) -> str:
        return f"whisper-{self._engine.model_name}"

    @property
    def provider(self) -> str:
        return "local"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        audio = to_whisper_audio(buffer)
        lang = language if isinstance(language, str) and language else self._language
        request_id = utils.shortuuid()
        if audio.size < WHISPER_SAMPLE_RATE // 10:  # under 100 ms: nothing to say
            result_text, result_lang, start, end, conf = "", lang, 0.0, 0.0, 0.0
        else:
            result = await self._engine.transcribe(
                audio, lang[:2] if lang else None, self._window_seconds
            )
            result_text, result_lang = result.text, result.language
            start, end, conf = result.start, result.end, result.confidence
        logger.debug(
            "local transcript",
            extra={
                "request_id": request_id,
                "audio_seconds": round(audio.size / WHISPER_SAMPLE_RATE, 3),
                "lk.pii.text": result_text,
            },
        )
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=request_id,
            alternatives=[
                stt.SpeechData(
                    language=LanguageCode(result_lang),
                    text=result_text,
                    start_time=start,
                    end_time=end,
                    confidence=conf,
                )
            ],
        )


@register("stt", "local", extra="local")
def create_local_stt(options: STTSettings, ctx: ProviderContext) -> Any:
    """Whisper ``tiny.en`` by default, ``base`` for better accuracy (about 2x slower)."""
    # as another provider's fallback the options name that provider's model: use the default
    model = options.model if options.provider == "local" else DEFAULT_WHISPER
    engine = get_whisper(ctx, model)
    return LocalSTT(
        engine=engine, language=options.language, window_seconds=options.window_seconds
    )
