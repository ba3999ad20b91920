"""API keys never appear in raised errors nor in log records ("transport errors can contain
credentials"). Each hosted adapter is given a wrong key that its fake refuses; the raised error,
its whole cause/context chain and every log line (DEBUG included) must not contain that key.

Before the adapter guarded it, the AssemblyAI plugin let aiohttp's handshake error escape, and
its ``repr`` printed the ``Authorization`` header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError, llm, stt, tts
from pydantic import SecretStr

from config.settings import LLMSettings, STTSettings, TTSSettings
from fakes.assemblyai_server import AssemblyAIFake
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake
from live.providers.registry import ProviderContext, create

pytestmark = pytest.mark.integration

WRONG = "sk-WRONG-secret-key-5f4dcc3b5aa765d61d8327deb882cf99"
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


def everything_printed(err: BaseException) -> str:
    parts: list[str] = []
    cur: BaseException | None = err
    while cur is not None:
        parts += [str(cur), repr(cur), str(getattr(cur, "body", ""))]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


async def use_openai(fake: OpenAIFake, ctx: ProviderContext) -> None:
    opts = LLMSettings(provider="openai", api_key=SecretStr(WRONG), base_url=fake.base_url)
    model = create("llm", "openai", opts, ctx)
    chat_ctx = llm.ChatContext()
    chat_ctx.add_message(role="user", content="hi")
    try:
        async with model.chat(chat_ctx=chat_ctx, conn_options=NO_RETRY) as stream:
            async for _ in stream:
                pass
    finally:
        await model.aclose()


async def use_assemblyai(fake: AssemblyAIFake, ctx: ProviderContext) -> None:
    opts = STTSettings(provider="assemblyai", api_key=SecretStr(WRONG), base_url=fake.base_url)
    model = create("stt", "assemblyai", opts, ctx)
    stream = model.stream(conn_options=NO_RETRY)
    pcm = np.zeros(480, dtype=np.int16).tobytes()
    stream.push_frame(rtc.AudioFrame(pcm, 48000, 1, 480))
    try:
        async for ev in stream:
            assert ev.type != stt.SpeechEventType.FINAL_TRANSCRIPT
    finally:
        await stream.aclose()


async def use_cartesia(fake: CartesiaFake, ctx: ProviderContext) -> None:
    opts = TTSSettings(provider="cartesia", api_key=SecretStr(WRONG), base_url=fake.base_url)
    model: tts.TTS = create("tts", "cartesia", opts, ctx)
    try:
        async with model.stream(conn_options=NO_RETRY) as stream:
            stream.push_text("Hi.")
            stream.end_input()
            async for _ in stream:
                pass
    finally:
        await model.aclose()


CASES: dict[str, tuple[type, Callable[..., Awaitable[None]]]] = {
    "openai": (OpenAIFake, use_openai),
    "assemblyai": (AssemblyAIFake, use_assemblyai),
    "cartesia": (CartesiaFake, use_cartesia),
}


@pytest.mark.parametrize("provider", sorted(CASES))
async def test_wrong_key_is_refused_without_leaking_it(
    provider: str,
    ctx: ProviderContext,
    http_ctx: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_cls, use = CASES[provider]
    caplog.set_level(logging.DEBUG)
    async with fake_cls() as fake:
        with pytest.raises(APIStatusError) as info:
            await use(fake, ctx)
    assert info.value.status_code == 401
    assert WRONG not in everything_printed(info.value)
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        if record.exc_info and record.exc_info[1] is not None:
            text += everything_printed(record.exc_info[1])
        assert WRONG not in text, f"{record.name}: key in a log record"
