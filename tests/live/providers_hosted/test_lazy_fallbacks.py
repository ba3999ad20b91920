"""Local fallbacks load when a hosted provider first fails, not in every job process.

The hosted profile's prewarm loads no local STT, LLM or TTS model; the session's providers are
built by ``live.pipeline.build_components`` as in the worker. When the hosted vendor (its
wire-protocol fake on 127.0.0.1) breaks mid-turn, the real local engine loads in a thread
(never on the event loop) and answers that same turn: the LLM goes on, the voice says the
rest, the STT hears the utterance again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, stt
from pydantic import SecretStr

import live.providers  # noqa: F401  (registers the local providers too)
from config.session import SessionSpec
from config.settings import Settings, load_settings
from fakes.assemblyai_server import AssemblyAIFake
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake
from live.pipeline import build_components, load_fallbacks
from live.providers import lazy
from live.providers.fallback import LLM_SWITCH_BREAK, STTFallback
from live.providers.local.prewarm import load_models, prewarm
from live.providers.local.turn_models import get_vad
from live.providers.registry import ProviderContext, create
from tests.live.providers_hosted.test_midturn_faults import (
    REPLY,
    SPOKEN,
    CaptureAudio,
    answer,
    run_turn,
    spoken,
)

pytestmark = pytest.mark.integration

LOCAL_MODELS = ("local.stt.", "local.llm.", "local.tts.")


def hosted(**groups: dict[str, Any]) -> Settings:
    """Hosted STT, LLM and TTS with the shipped fallbacks (local), keys from the test."""
    base: dict[str, dict[str, Any]] = {
        "stt": {"provider": "assemblyai", "api_key": SecretStr("k")},
        "llm": {"provider": "openai", "api_key": SecretStr("k"), "model": "m"},
        "tts": {"provider": "cartesia", "api_key": SecretStr("k"), "voice": "voice-abc",
                "model": "sonic-2"},
        "avatar": {"provider": "none"},
    }
    for kind, values in groups.items():
        base[kind] = {**base[kind], **values}
    settings = load_settings(_env_file=None, **base)
    assert (settings.stt.fallback, settings.llm.fallback, settings.tts.fallback) == ("local",) * 3
    return settings


def local_models(ctx: ProviderContext) -> list[str]:
    return sorted(k for k in ctx.shared if k.startswith(LOCAL_MODELS))


@pytest.fixture
def load_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Which thread each first-use load ran on (the real loader, observed)."""
    seen: list[tuple[str, int]] = []
    real: Callable[..., None] = lazy.load_models

    def observed(kind: Any, name: str, options: Any, ctx: ProviderContext) -> None:
        seen.append((kind, threading.get_ident()))
        real(kind, name, options, ctx)

    monkeypatch.setattr(lazy, "load_models", observed)
    return seen


def test_the_hosted_prewarm_loads_no_fallback_model_unless_asked() -> None:
    settings = hosted()
    ctx = ProviderContext(settings=settings)
    prewarm(ctx)
    assert local_models(ctx) == []
    comps = build_components(settings, SessionSpec(), ctx, get_vad(ctx))
    assert isinstance(comps.stt, STTFallback)
    assert local_models(ctx) == []  # the session's providers are built, still no model

    eager = ProviderContext(settings=settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"preload_fallbacks": True})}))
    prewarm(eager)
    assert local_models(eager) == [
        "local.llm.smollm2-135m", "local.llm.smollm2-135m.warm", "local.stt.tiny.en",
        "local.stt.tiny.en.warm", "local.tts.piper.joe-us"]


def portrait_loaded(ctx: ProviderContext) -> bool:
    return any(k.startswith("avatar.local.pack:") for k in ctx.shared)


async def test_a_hosted_avatars_local_fallback_loads_its_portrait_in_a_thread_when_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a hosted face, the local one's portrait pack is not in every job process; when
    the hosted face fails, it loads off the event loop (the session's audio goes on)."""
    from live import worker
    from live.avatar import LocalAvatarSession
    from live.providers import local_avatar

    settings = hosted(avatar={"provider": "tavus", "api_key": SecretStr("k"), "fallback": "local"})
    ctx = ProviderContext(settings=settings)
    prewarm(ctx)
    assert not portrait_loaded(ctx)

    threads: list[int] = []
    real = local_avatar.load_portrait

    def observed(options: Any, pctx: ProviderContext) -> Any:
        threads.append(threading.get_ident())
        return real(options, pctx)

    monkeypatch.setattr(local_avatar, "load_portrait", observed)
    built: dict[str, Any] = {}
    [(name, build)] = worker.avatar_factories([("local", settings.avatar)], ctx, built)
    avatar = await build()
    assert name == "local" and isinstance(avatar, LocalAvatarSession) and built["local"] is avatar
    assert portrait_loaded(ctx)
    assert threads and threads[0] != threading.get_ident()  # loaded in a thread, not the loop

    eager = ProviderContext(settings=settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"preload_fallbacks": True})}))
    prewarm(eager)
    assert portrait_loaded(eager)
    local_face = ProviderContext(settings=settings.model_copy(
        update={"avatar": settings.avatar.model_copy(update={"provider": "local"})}))
    prewarm(local_face)
    assert portrait_loaded(local_face)  # the chosen face is always ready at the first call


@pytest.mark.parametrize("kind", ["stt", "llm", "tts"])
async def test_a_stand_in_is_what_the_real_local_provider_will_be(kind: Any) -> None:
    """The adapters size themselves on the stand-in (capabilities, sample rate, channels);
    and once its models are loaded, building the real one loads nothing more."""
    settings = hosted()
    ctx = ProviderContext(settings=settings)
    options = getattr(settings, kind)
    stand_in = lazy.deferred(kind, "local", options, ctx)
    assert stand_in is not None and not lazy.is_loaded(stand_in)
    load_models(kind, "local", options, ctx)
    loaded = set(ctx.shared)
    real = create(kind, "local", options, ctx)
    assert set(ctx.shared) == loaded
    assert (stand_in.label, stand_in.model, stand_in.provider) == (
        real.label, real.model, real.provider)
    if kind != "llm":
        assert stand_in.capabilities == real.capabilities
    if kind == "tts":
        assert (stand_in.sample_rate, stand_in.num_channels) == (
            real.sample_rate, real.num_channels)
    assert await lazy.resolved(stand_in) is not real  # its own, built from the same models
    assert lazy.is_loaded(stand_in)


async def test_llm_failing_mid_answer_the_unloaded_local_model_finishes_the_turn(
    openai_fake: OpenAIFake, load_threads: list[tuple[str, int]]
) -> None:
    openai_fake.reply = lambda _m: REPLY
    openai_fake.close_after_chunks = 3  # "Hello from the", then the connection drops
    openai_fake.fail_requests = 1
    settings = hosted(llm={"base_url": openai_fake.base_url, "api_key": SecretStr(
        openai_fake.api_key)})
    ctx = ProviderContext(settings=settings)
    comps = await load_fallbacks(build_components(settings, SessionSpec(), ctx, get_vad(ctx)))
    assert local_models(ctx) == []
    try:
        async with AgentSession(llm=comps.llm) as session:
            await session.start(Agent(instructions="Be brief."))
            text = answer(await run_turn(session, "when do you open"))
    finally:
        await comps.llm.aclose()
    assert text.startswith("Hello from the" + LLM_SWITCH_BREAK.rstrip())
    assert len(text) > len("Hello from the" + LLM_SWITCH_BREAK) + 3  # SmolLM2 said something
    assert local_models(ctx) == ["local.llm.smollm2-135m"]
    assert load_threads and all(t != threading.get_ident() for _, t in load_threads)


async def test_tts_failing_mid_speech_the_unloaded_local_voice_says_the_rest(
    openai_fake: OpenAIFake,
    cartesia_fake: CartesiaFake,
    http_ctx: None,
    load_threads: list[tuple[str, int]],
) -> None:
    openai_fake.reply = lambda _m: SPOKEN
    cartesia_fake.close_after_chunks = 3  # 0.3 s of "Sure." and the socket drops
    cartesia_fake.fail_sockets = 1
    settings = hosted(
        llm={"base_url": openai_fake.base_url, "api_key": SecretStr(openai_fake.api_key)},
        tts={"base_url": cartesia_fake.base_url, "api_key": SecretStr(cartesia_fake.api_key)},
    )
    ctx = ProviderContext(settings=settings)
    comps = await load_fallbacks(build_components(settings, SessionSpec(), ctx, get_vad(ctx)))
    assert local_models(ctx) == []
    sink = CaptureAudio()
    try:
        async with AgentSession(
            llm=comps.llm, tts=comps.tts, use_tts_aligned_transcript=True
        ) as session:
            session.output.audio = sink
            await session.start(Agent(instructions="Be brief."))
            # the text the session records from the voices' word timings: the whole answer
            # (tests/live/providers_hosted/test_fallback_transcript.py: as stored)
            assert answer(await run_turn(session, "when do you open")) == SPOKEN
    finally:
        await comps.tts.aclose()
        await comps.llm.aclose()
    heard = sink.tones()
    vendor = heard.get(220, 0.0)
    assert vendor >= 0.25  # the vendor's voice first
    # then Piper, for the rest of the same answer: "Sure. We open at nine every morning.
    # The bakery closes at six." again from the sentence that was cut, about 3 s of speech
    total = sum(f.samples_per_channel / f.sample_rate for f in sink.frames)
    assert total - vendor > 2.0
    assert local_models(ctx) == ["local.tts.piper.joe-us"]
    assert load_threads and all(t != threading.get_ident() for _, t in load_threads)


async def test_stt_failing_mid_utterance_the_unloaded_local_model_hears_all_of_it(
    http_ctx: None, load_threads: list[tuple[str, int]]
) -> None:
    """AssemblyAI dies 0.6 s into the caller's question; Whisper, loaded only now, hears the
    whole question (replayed from its start)."""
    async with AssemblyAIFake() as vendor:
        vendor.close_after_audio_bytes = int(0.6 * 16000) * 2
        vendor.refuse_after_drop = True  # it crashed: its own reconnect is refused too
        settings = hosted(stt={"base_url": vendor.base_url, "api_key": SecretStr(
            vendor.api_key)})
        ctx = ProviderContext(settings=settings)
        comps = await load_fallbacks(
            build_components(settings, SessionSpec(), ctx, get_vad(ctx)))
        adapter = comps.stt
        assert isinstance(adapter, STTFallback) and local_models(ctx) == []
        question = spoken("When do you open tomorrow morning?", ProviderContext(settings=settings))
        silence = [rtc.AudioFrame(bytes(2 * 960), 48000, 1, 960) for _ in range(50)]
        stream = adapter.stream()
        texts: list[str] = []

        async def read() -> None:
            async for ev in stream:
                if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    texts.append(ev.alternatives[0].text)
                    return

        reader = asyncio.create_task(read())
        try:
            for frame in question + silence:
                stream.push_frame(frame)
            await asyncio.wait_for(reader, timeout=60)
        finally:
            reader.cancel()
            await stream.aclose()
            await adapter.aclose()
    assert vendor.sessions and not any(s.turns_sent for s in vendor.sessions)
    words = texts[0].lower()
    assert "open" in words and "tomorrow" in words, texts  # from its first words on
    assert local_models(ctx) == ["local.stt.tiny.en"]
    assert load_threads and all(t != threading.get_ident() for _, t in load_threads)


async def test_a_hosted_stt_that_cannot_be_built_gives_way_to_the_local_one_loaded_off_the_loop(
    load_threads: list[tuple[str, int]],
) -> None:
    """No AssemblyAI key: the session starts on the local STT, loaded in a thread before the
    session talks to it (and it is the real one, which the worker tells when the agent
    speaks)."""
    from live.providers.local_stt import LocalSTT

    settings = hosted(stt={"api_key": None})
    ctx = ProviderContext(settings=settings)
    comps = build_components(settings, SessionSpec(), ctx, get_vad(ctx))
    assert comps.stt_name == "local" and not lazy.is_loaded(comps.stt)
    assert local_models(ctx) == []
    comps = await load_fallbacks(comps)
    assert isinstance(comps.stt, LocalSTT)
    assert local_models(ctx) == ["local.stt.tiny.en"]
    assert load_threads and all(t != threading.get_ident() for _, t in load_threads)
