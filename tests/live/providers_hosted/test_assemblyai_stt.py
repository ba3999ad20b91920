"""The real livekit-plugins-assemblyai STT against the v3 streaming fake on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from pydantic import SecretStr

from config.settings import STTSettings
from fakes.assemblyai_server import AssemblyAIFake
from live.providers.fallback import build_stt_with_fallback
from live.providers.registry import ProviderContext, create
from tests.stubs import ScriptedSTT

pytestmark = pytest.mark.integration

RATE = 48000  # what a room delivers; the plugin's stream resamples to 16 kHz
FRAME = RATE // 50  # 20 ms


def options(fake: AssemblyAIFake, **kw: object) -> STTSettings:
    return STTSettings(
        provider="assemblyai",
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        model="universal-streaming",
        **kw,  # type: ignore[arg-type]
    )


def speech(seconds: float) -> list[rtc.AudioFrame]:
    n = int(seconds * RATE)
    pcm = (np.sin(np.arange(n) * 2 * np.pi * 180 / RATE) * 6000).astype(np.int16)
    return [
        rtc.AudioFrame(pcm[i : i + FRAME].tobytes(), RATE, 1, len(pcm[i : i + FRAME]))
        for i in range(0, n - FRAME + 1, FRAME)
    ]


async def finals(stream: stt.RecognizeStream, frames: list[rtc.AudioFrame]) -> list[str]:
    """Push ``frames``, end the input, and collect every final transcript until the end."""
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    out: list[str] = []
    async for ev in stream:
        if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
            out.append(ev.alternatives[0].text)
    return out


async def test_stream_yields_the_final_transcript(
    assemblyai_fake: AssemblyAIFake, ctx: ProviderContext, http_ctx: None
) -> None:
    model = create("stt", "assemblyai", options(assemblyai_fake), ctx)
    async with model.stream() as stream:
        texts = await asyncio.wait_for(finals(stream, speech(1.2)), timeout=20)
    assert texts == ["hello from the fake transcriber"]

    (session,) = assemblyai_fake.sessions
    assert session.authorization == assemblyai_fake.api_key
    assert session.query["sample_rate"] == "16000"
    assert session.query["encoding"] == "pcm_s16le"
    assert session.query["speech_model"] == "universal-streaming-english"
    # all 1.2 s arrived as 16 kHz s16le (the last partial buffer is flushed at end of input)
    assert abs(session.audio_bytes - int(1.2 * 16000) * 2) <= 2 * 16000 * 0.05
    assert session.control[-1] == {"type": "Terminate"}


async def test_failing_assemblyai_falls_back_and_transcription_continues(
    assemblyai_fake: AssemblyAIFake, ctx: ProviderContext, http_ctx: None
) -> None:
    assemblyai_fake.close_after_begin = True  # the socket dies right after the session starts
    primary = create("stt", "assemblyai", options(assemblyai_fake), ctx)
    local = ScriptedSTT("heard by the local transcriber", seconds=0.5)
    adapter = build_stt_with_fallback(primary, local, attempt_timeout=5.0, retry_interval=0.1)
    switched = asyncio.Event()
    adapter.on("stt_availability_changed", lambda ev: switched.set() if not ev.available else None)

    stream = adapter.stream(conn_options=APIConnectOptions(max_retry=0, timeout=5.0))
    texts: list[str] = []

    async def feed() -> None:
        # the caller keeps talking; frames pushed before the switch went to the dead socket
        await asyncio.wait_for(switched.wait(), timeout=20)
        for frame in speech(1.0):
            stream.push_frame(frame)
        stream.end_input()

    async def read() -> None:
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                texts.append(ev.alternatives[0].text)

    for frame in speech(0.2):
        stream.push_frame(frame)
    try:
        await asyncio.wait_for(asyncio.gather(feed(), read()), timeout=30)
    finally:
        await stream.aclose()
        await adapter.aclose()
    assert texts and set(texts) == {"heard by the local transcriber"}
    assert len(assemblyai_fake.sessions) >= 1
