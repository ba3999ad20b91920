"""The real livekit-plugins-cartesia TTS against the websocket fake on 127.0.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, tts
from pydantic import SecretStr

from config.settings import TTSSettings
from fakes.cartesia_server import CartesiaFake
from live.providers.fallback import build_tts_with_fallback
from live.providers.registry import ProviderContext, create
from tests.stubs import ToneTTS

pytestmark = pytest.mark.integration

TEXT = "Hello there. This is the fake voice speaking."


def options(fake: CartesiaFake) -> TTSSettings:
    return TTSSettings(
        provider="cartesia",
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        voice="voice-abc",
        model="sonic-2",
    )


async def speak(
    model: tts.TTS, text: str, conn_options: APIConnectOptions | None = None
) -> list[rtc.AudioFrame]:
    kwargs = {"conn_options": conn_options} if conn_options else {}
    async with model.stream(**kwargs) as stream:
        stream.push_text(text)
        stream.end_input()
        return [ev.frame async for ev in stream]


def seconds(frames: list[rtc.AudioFrame]) -> float:
    return sum(f.samples_per_channel / f.sample_rate for f in frames)


async def test_stream_yields_audio_of_the_right_length(
    cartesia_fake: CartesiaFake, ctx: ProviderContext, http_ctx: None
) -> None:
    model = create("tts", "cartesia", options(cartesia_fake), ctx)
    try:
        frames = await asyncio.wait_for(speak(model, TEXT), timeout=20)
    finally:
        await model.aclose()

    assert frames and all(f.sample_rate == 24000 and f.num_channels == 1 for f in frames)
    # the fake speaks 40 ms per character of each sentence (spaces between sentences excluded)
    expected = sum(len(s) for s in ("Hello there.", "This is the fake voice speaking.")) * 0.04
    assert abs(seconds(frames) - expected) < 0.05
    pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    assert np.abs(pcm).max() > 4000  # real signal, not silence

    assert cartesia_fake.handshakes[0]["cartesia_version"]
    texts = [r for r in cartesia_fake.requests if "transcript" in r]
    assert "".join(r["transcript"] for r in texts).split() == TEXT.split()
    assert texts[-1]["continue"] is False and all(r["continue"] for r in texts[:-1])
    assert len({r["context_id"] for r in texts}) == 1
    first = texts[0]
    assert first["model_id"] == "sonic-2"
    assert first["voice"] == {"mode": "id", "id": "voice-abc"}
    assert first["output_format"] == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": 24000,
    }


async def test_failing_cartesia_falls_back_to_local_voice(
    cartesia_fake: CartesiaFake, ctx: ProviderContext, http_ctx: None
) -> None:
    cartesia_fake.close_on_request = True  # the socket dies as soon as text arrives
    primary = create("tts", "cartesia", options(cartesia_fake), ctx)
    local = ToneTTS(sample_rate=22050)
    adapter = build_tts_with_fallback(primary, local, max_retry_per_tts=0)
    try:
        frames = await asyncio.wait_for(
            speak(adapter, "Still talking.", APIConnectOptions(max_retry=0, timeout=5.0)),
            timeout=30,
        )
    finally:
        await adapter.aclose()
    assert local.calls >= 1
    assert cartesia_fake.requests  # the primary was tried first
    assert frames and all(f.sample_rate == 24000 for f in frames)  # resampled to the adapter's
    assert seconds(frames) > 0.2
